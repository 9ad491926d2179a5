"""Datasets by name: each builder returns uint8 images, labels, class names and a source record.

A new dataset is one builder function plus one entry in :data:`DATASET_BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitpeft.data.arrays import stratified_split, write_splits
from vitpeft.data.digits import build_digits
from vitpeft.data.shapes import build_shapes

DATASET_BUILDERS: dict[str, Callable[..., tuple]] = {
    "sklearn_digits": build_digits,
    "synthetic_shapes": build_shapes,
}


def prepare_dataset(spec: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Build the dataset described by one ``datasets:`` entry of the config and write its splits.

    Args:
        spec: the config entry: ``kind``, ``split_seed``, ``val_fraction``, ``test_fraction`` and
            the builder's own keyword arguments under ``options``.
        out_dir: folder that receives ``{train,val,test}.npz`` and ``manifest.json``.
    """
    kind = spec["kind"]
    if kind not in DATASET_BUILDERS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(DATASET_BUILDERS)}")
    images, labels, class_names, source = DATASET_BUILDERS[kind](**spec.get("options", {}))
    split_index = stratified_split(labels, spec["val_fraction"], spec["test_fraction"], spec["split_seed"])
    source = {
        **source,
        "split_seed": spec["split_seed"],
        "val_fraction": spec["val_fraction"],
        "test_fraction": spec["test_fraction"],
    }
    return write_splits(out_dir, images, labels, split_index, class_names, source)
