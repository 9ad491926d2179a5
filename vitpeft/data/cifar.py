"""CIFAR-10 and CIFAR-100 from the official python tarballs (Krizhevsky, 2009).

The archives hold pickled batches: ``data`` is uint8 ``(N, 3072)`` in channel-major order and
the labels are ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
    },
}


def _load_pickle(archive: tarfile.TarFile, member: str) -> dict:
    try:
        handle = archive.extractfile(member)
    except KeyError as err:
        raise ValueError(f"{archive.name}: member {member!r} is missing; is this the right archive?") from err
    return pickle.load(handle, encoding="latin1")


def read_cifar(archive_path: str | Path, variant: str) -> dict:
    """Official train and test splits as uint8 ``(N, 32, 32, 3)`` arrays, with the class names.

    Raises:
        ValueError: the archive is truncated, corrupt, or lacks an expected member.
    """
    spec = VARIANTS[variant]
    result = {}
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            folder = spec["folder"]
            meta_file, meta_key = spec["meta"]
            result["class_names"] = list(_load_pickle(archive, f"{folder}/{meta_file}")[meta_key])
            for split in ("train", "test"):
                batches = [_load_pickle(archive, f"{folder}/{name}") for name in spec[split]]
                data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
                labels = np.concatenate([np.asarray(b[spec["label_key"]], dtype=np.int64) for b in batches])
                result[split] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels)
    except (tarfile.TarError, EOFError, pickle.UnpicklingError, OSError) as err:
        raise ValueError(
            f"{archive_path}: cannot read the {variant} archive ({err}); delete it and rerun"
        ) from err
    return result
