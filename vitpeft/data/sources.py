"""Dataset kinds and the official archives they come from. Imports nothing heavy, so the workflow
can validate its config and plan downloads without loading the data stack."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vitpeft.data.glyphs import DEFAULT_CHARACTERS
from vitpeft.data.shapes import SHAPE_CLASSES


@dataclass(frozen=True)
class Archive:
    """An official archive: file name, published MD5 and the base URL it is served from."""

    name: str
    md5: str
    base_url: str


CIFAR_BASE_URL = "https://www.cs.toronto.edu/~kriz"
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", CIFAR_BASE_URL),
    "cifar100": Archive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", CIFAR_BASE_URL),
    "tinyimagenet": Archive(
        "tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", "http://cs231n.stanford.edu"
    ),
}
DATASET_KINDS = ("sklearn_digits", "synthetic_shapes", "font_glyphs", *ARCHIVES)


@dataclass(frozen=True)
class KindSize:
    """What a dataset kind holds before the pipeline splits it (known without the data, so that a
    study's compute can be estimated when the workflow loads).

    Attributes:
        classes: number of classes.
        train, test: images of the official train and test splits; for a kind without official
            splits, ``train`` is the whole pool and ``test`` is None.
        size_option: the builder option that sets the pool's size, if any (it then replaces ``train``).
    """

    classes: int
    train: int
    test: int | None = None
    size_option: str | None = None


KIND_SIZES: dict[str, KindSize] = {
    "sklearn_digits": KindSize(classes=10, train=1797),
    "synthetic_shapes": KindSize(classes=len(SHAPE_CLASSES), train=6400, size_option="num_images"),
    "font_glyphs": KindSize(classes=len(DEFAULT_CHARACTERS), train=10_000, size_option="num_images"),
    "cifar10": KindSize(classes=10, train=50_000, test=10_000),
    "cifar100": KindSize(classes=100, train=50_000, test=10_000),
    "tinyimagenet": KindSize(classes=200, train=100_000, test=10_000),  # test: its official val
}


def kind_size(spec: dict[str, Any]) -> KindSize:
    """The sizes of one ``datasets:`` entry's kind, its pool sized by its options where they say."""
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
    size = kind_size(spec)
    if size.test is None:  # a pool: test first, then validation from the rest
        test = held_out(size.train, spec["test_fraction"])
        rest = size.train - test
        val = held_out(rest, spec["val_fraction"] / (1.0 - spec["test_fraction"]))
    else:
        test, rest = size.test, size.train
        val = held_out(rest, spec["val_fraction"])
    return {"train": rest - val, "val": val, "test": test, "classes": size.classes}


def check_kind(kind: str) -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {list(DATASET_KINDS)}")


def archive_url(spec: dict) -> str:
    """Where a dataset's archive is fetched from: the config's ``base_url`` (a mirror) or the official one."""
    archive = ARCHIVES[spec["kind"]]
    return f"{(spec.get('base_url') or archive.base_url).rstrip('/')}/{archive.name}"


def archive_md5(spec: dict) -> str:
    """The MD5 the archive must have: the published one, unless the config pins another (a fixture)."""
    return spec.get("md5") or ARCHIVES[spec["kind"]].md5
