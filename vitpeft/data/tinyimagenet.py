"""TinyImageNet-200 from the official zip (Stanford CS231n): 200 classes of 64x64 images.

The test labels are not published, so the official ``val`` split serves as the test set.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = "tiny-imagenet-200"


def _decode(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    with Image.open(io.BytesIO(archive.read(member))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_tinyimagenet(archive_path: str | Path) -> dict:
    """Official train and val (as test) splits as uint8 ``(N, 64, 64, 3)``, with class names.

    Raises:
        ValueError: the zip is corrupt, a class folder or an annotation is missing.
    """
    try:
        with zipfile.ZipFile(archive_path) as archive:
            names = set(archive.namelist())
            for required in (f"{ROOT}/wnids.txt", f"{ROOT}/words.txt", f"{ROOT}/val/val_annotations.txt"):
                if required not in names:
                    raise ValueError(f"{archive_path}: {required} is missing")
            wnids = archive.read(f"{ROOT}/wnids.txt").decode().split()
            words = dict(
                line.split("\t", 1)
                for line in archive.read(f"{ROOT}/words.txt").decode().splitlines()
                if "\t" in line
            )
            index = {wnid: i for i, wnid in enumerate(wnids)}
            train_images, train_labels = [], []
            for wnid in wnids:
                prefix = f"{ROOT}/train/{wnid}/images/"
                members = sorted(n for n in names if n.startswith(prefix) and n.endswith(".JPEG"))
                if not members:
                    raise ValueError(f"{archive_path}: class folder {prefix} is missing or empty")
                train_images += [_decode(archive, m) for m in members]
                train_labels += [index[wnid]] * len(members)
            test_images, test_labels = [], []
            for line in archive.read(f"{ROOT}/val/val_annotations.txt").decode().splitlines():
                fields = line.split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise ValueError(f"{archive_path}: bad val annotation line {line!r}")
                member = f"{ROOT}/val/images/{fields[0]}"
                if member not in names:
                    raise ValueError(f"{archive_path}: {member} is annotated but missing")
                test_images.append(_decode(archive, member))
                test_labels.append(index[fields[1]])
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(
            f"{archive_path}: cannot read the TinyImageNet zip ({err}); delete it and rerun"
        ) from err
    return {
        "class_names": [words.get(w, w).split(",")[0].strip() for w in wnids],
        "wnids": wnids,
        "train": (np.stack(train_images), np.asarray(train_labels, dtype=np.int64)),
        "test": (np.stack(test_images), np.asarray(test_labels, dtype=np.int64)),
    }
