"""How many images each split of a ``datasets:`` entry will hold, known without preparing it: what
the compute estimate and the config checks need when the workflow loads."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vitpeft.data.sources import KIND_SIZES, VTAB_TASKS, VTAB_TRAIN, VTAB_VAL, KindSize, image_folder_size


def kind_size(spec: dict[str, Any]) -> KindSize:
    """The sizes of one ``datasets:`` entry's kind, its pool sized by its options where they say."""
    if spec["kind"] == "image_folder":
        return image_folder_size(spec["options"]["root"])
    if spec["kind"] == "hf_dataset":
        from vitpeft.data.hf_dataset import hf_dataset_size

        return hf_dataset_size(**{k: v for k, v in spec["options"].items() if k != "image_size"})
    size = KIND_SIZES[spec["kind"]]
    options = spec.get("options", {})
    if "characters" in options:  # font_glyphs: one class per character drawn
        size = dataclasses.replace(size, classes=len(options["characters"]))
    if size.size_option in options:
        return dataclasses.replace(size, train=options[size.size_option])
    return size


def held_out(n: int, fraction: float) -> int:
    """Images that a stratified hold-out of ``fraction`` takes from ``n`` (scikit-learn rounds up)."""
    return math.ceil(fraction * n)


def split_sizes(spec: dict[str, Any]) -> dict[str, int]:
    """Images per split of one ``datasets:`` entry, as :func:`vitpeft.data.prepare_dataset` makes
    them, known without the data: validation (and, for a pool, test) held out by ``val_fraction``
    and ``test_fraction``. Also ``classes``."""
    if spec["kind"] == "vtab1k":
        task = VTAB_TASKS[spec["options"]["task"]]
        # train: the final runs' train800val200, an upper bound for the tuning runs' train800
        return {"train": VTAB_TRAIN + VTAB_VAL, "val": VTAB_VAL, "test": task.test, "classes": task.classes}
    size = kind_size(spec)
    if size.val is not None:  # validation given, not carved
        return {"train": size.train, "val": size.val, "test": size.test, "classes": size.classes}
    if size.test is None:  # a pool: test first, then validation from the rest
        test = held_out(size.train, spec["test_fraction"])
        rest = size.train - test
        val = held_out(rest, spec["val_fraction"] / (1.0 - spec["test_fraction"]))
    else:
        test, rest = size.test, size.train
        val = held_out(rest, spec["val_fraction"])
    return {"train": rest - val, "val": val, "test": test, "classes": size.classes}
