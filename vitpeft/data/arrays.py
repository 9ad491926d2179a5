"""The on-disk dataset format: one uint8 images array and one labels array per split.

A prepared dataset is a folder with ``train.npz``, ``val.npz``, ``test.npz`` (``images``: uint8
``(N, H, W, C)``, ``labels``: int64 ``(N,)``) and a ``manifest.json`` that records where the data
came from, the split seed, counts per class and the SHA-256 of every file written.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vitpeft.io import atomic_path, read_json, sha256_file, write_json

SPLITS = ("train", "val", "test")


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(keep, holdout)`` with ``fraction`` of every class held out, reproducibly."""
    # Imported here: scikit-learn takes most of a second to import, and only data preparation needs
    # it, while every training job and every parse of the Snakefile imports this package.
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    keep, holdout = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(keep), np.sort(holdout)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of a stratified train/val/test split, the same on every machine for one seed."""
    rest, test = stratified_holdout(labels, test_fraction, seed)
    train, val = stratified_holdout(labels[rest], val_fraction / (1.0 - test_fraction), seed)
    return {"train": rest[train], "val": rest[val], "test": test}


def write_splits(
    out_dir: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    split_index: dict[str, np.ndarray],
    class_names: list[str],
    source: dict[str, Any],
    final_train: list[str] | None = None,
) -> dict[str, Any]:
    """Write each split and a manifest with checksums; return the manifest.

    Args:
        final_train: the splits the study's runs train on together, when not ``train`` alone
            (VTAB-1k's protocol: train800 and val200); recorded as the manifest's ``final_train``.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    out_dir = Path(out_dir)
    files = {}
    counts = {}
    for split in SPLITS:
        idx = split_index[split]
        path = out_dir / f"{split}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, images=images[idx], labels=labels[idx].astype(np.int64))
        files[path.name] = sha256_file(path)
        per_class = Counter(int(y) for y in labels[idx])
        counts[split] = [per_class.get(c, 0) for c in range(len(class_names))]
    manifest = {
        "source": source,
        "class_names": class_names,
        "image_shape": list(images.shape[1:]),
        "counts_per_class": counts,
        "sha256": files,
    }
    if final_train is not None:
        unknown = sorted(set(final_train) - set(SPLITS))
        if unknown:
            raise ValueError(f"final_train: unknown splits {unknown}; known: {list(SPLITS)}")
        manifest["final_train"] = list(final_train)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(data_dir) / f"{split}.npz") as arrays:
        return arrays["images"], arrays["labels"]


def final_train_splits(manifest: dict[str, Any]) -> list[str]:
    """The splits the study's (not the tuning) runs train on: ``train``, unless the manifest says."""
    return manifest.get("final_train", ["train"])


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(data_dir) / "manifest.json")


def verify(data_dir: str | Path) -> None:
    """Fail loudly if a split file no longer matches the checksum recorded when it was written."""
    data_dir = Path(data_dir)
    for name, expected in load_manifest(data_dir)["sha256"].items():
        actual = sha256_file(data_dir / name)
        if actual != expected:
            raise ValueError(f"{data_dir / name}: SHA-256 {actual} does not match the manifest's {expected}")
