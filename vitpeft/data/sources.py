"""Dataset kinds and the official archives they come from. Imports nothing heavy, so the workflow
can validate its config and plan downloads without loading the data stack."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
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
# Kinds that read a user's files (or a Hugging Face dataset) named by their options, at a stated size.
FILE_KINDS = ("image_folder", "vtab1k", "hf_dataset")
DATASET_KINDS = ("sklearn_digits", "synthetic_shapes", "font_glyphs", *ARCHIVES, *FILE_KINDS)
# The options each file kind requires, and those it also takes. ``image_size`` is the side every
# image is resized to when prepared; without it the workflow uses its study's models' input size.
KIND_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "image_folder": (("root",), ("image_size",)),
    "vtab1k": (("root", "task"), ("image_size",)),
    "hf_dataset": (
        ("path", "image_column", "label_column"),
        ("train_split", "test_split", "val_split", "image_size"),
    ),
}


@dataclass(frozen=True)
class VtabTask:
    """One task of VTAB-1k (Zhai et al., 2019): its group, classes, test images and label (as listed in
    VPT's appendix, Jia et al., ECCV 2022). Every task trains on 800 images and validates on 200."""

    group: str
    classes: int
    test: int
    label: str  # as VTAB-1k tables print it


# The task folders of VTAB-1k as NOAH (Zhang et al., 2022) distributes it and VPT, NOAH and the
# PETL benchmarks after them read it: root/<task>/{train800,val200,train800val200,test}.txt.
VTAB_TASKS: dict[str, VtabTask] = {
    "cifar": VtabTask("natural", 100, 10_000, "CIFAR-100"),
    "caltech101": VtabTask("natural", 102, 6_084, "Caltech101"),
    "dtd": VtabTask("natural", 47, 1_880, "DTD"),
    "oxford_flowers102": VtabTask("natural", 102, 6_149, "Flowers102"),
    "oxford_iiit_pet": VtabTask("natural", 37, 3_669, "Pets"),
    "svhn": VtabTask("natural", 10, 26_032, "SVHN"),
    "sun397": VtabTask("natural", 397, 21_750, "Sun397"),
    "patch_camelyon": VtabTask("specialized", 2, 32_768, "Camelyon"),
    "eurosat": VtabTask("specialized", 10, 5_400, "EuroSAT"),
    "resisc45": VtabTask("specialized", 45, 6_300, "Resisc45"),
    "diabetic_retinopathy": VtabTask("specialized", 5, 42_670, "Retinopathy"),
    "clevr_count": VtabTask("structured", 8, 15_000, "Clevr-Count"),
    "clevr_dist": VtabTask("structured", 6, 15_000, "Clevr-Dist"),
    "dmlab": VtabTask("structured", 6, 22_735, "DMLab"),
    "kitti": VtabTask("structured", 4, 711, "KITTI-Dist"),
    "dsprites_loc": VtabTask("structured", 16, 73_728, "dSpr-Loc"),
    "dsprites_ori": VtabTask("structured", 16, 73_728, "dSpr-Ori"),
    "smallnorb_azi": VtabTask("structured", 18, 12_150, "sNORB-Azim"),
    "smallnorb_ele": VtabTask("structured", 9, 12_150, "sNORB-Elev"),
}
VTAB_GROUPS = ("natural", "specialized", "structured")
VTAB_TRAIN, VTAB_VAL = 800, 200


@dataclass(frozen=True)
class KindSize:
    """What a dataset kind holds before the pipeline splits it (known without the data, so that a
    study's compute can be estimated when the workflow loads).

    Attributes:
        classes: number of classes.
        train, test: images of the official train and test splits; for a kind without official
            splits, ``train`` is the whole pool and ``test`` is None.
        size_option: the builder option that sets the pool's size, if any (it then replaces ``train``).
        val: images of a validation split the data gives; None when it is carved from train.
    """

    classes: int
    train: int
    test: int | None = None
    size_option: str | None = None
    val: int | None = None


KIND_SIZES: dict[str, KindSize] = {
    "sklearn_digits": KindSize(classes=10, train=1797),
    "synthetic_shapes": KindSize(classes=len(SHAPE_CLASSES), train=6400, size_option="num_images"),
    "font_glyphs": KindSize(classes=len(DEFAULT_CHARACTERS), train=10_000, size_option="num_images"),
    "cifar10": KindSize(classes=10, train=50_000, test=10_000),
    "cifar100": KindSize(classes=100, train=50_000, test=10_000),
    "tinyimagenet": KindSize(classes=200, train=100_000, test=10_000),  # test: its official val
}


def check_kind(kind: str) -> None:
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {list(DATASET_KINDS)}")


def check_options(kind: str, options: dict[str, Any]) -> None:
    """The options a file kind needs are there, and none it does not know.

    Raises:
        ValueError: naming the option (as ``options.<key>``) and the kind.
    """
    if kind not in KIND_OPTIONS:
        return
    required, optional = KIND_OPTIONS[kind]
    for key in required:
        if key not in options:
            raise ValueError(f"options.{key}: required by kind {kind!r}")
    for key in options:
        if key not in required + optional:
            raise ValueError(
                f"options.{key}: unknown option of kind {kind!r}; known: {list(required + optional)}"
            )
    size = options.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"options.image_size: must be an integer >= 1 (pixels), got {size!r}")
    if kind == "vtab1k" and options["task"] not in VTAB_TASKS:
        raise ValueError(f"options.task: unknown VTAB-1k task {options['task']!r}; known: {list(VTAB_TASKS)}")


def image_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (recursively), sorted, hidden ones left out."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def class_folders(root: Path, split: str) -> dict[str, list[Path]]:
    """``root/<split>/<class>/``: class name -> its files, by class name.

    Raises:
        ValueError: naming the folder, when it is missing or holds no class folder.
    """
    folder = root / split
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (an image folder holds train/<class>/ and test/<class>/)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder}: holds no class folder")
    return {p.name: image_files(p) for p in classes}


@functools.cache
def image_folder_size(root: str) -> KindSize:
    """The sizes of an image folder, counted from its files (known before any image is read)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"options.root: {root} is not a folder")
    train = class_folders(root_path, "train")
    test = class_folders(root_path, "test")
    val = class_folders(root_path, "val") if (root_path / "val").is_dir() else None
    return KindSize(
        classes=len(train),
        train=sum(map(len, train.values())),
        test=sum(map(len, test.values())),
        val=None if val is None else sum(map(len, val.values())),
    )


def archive_url(spec: dict) -> str:
    """Where a dataset's archive is fetched from: the config's ``base_url`` (a mirror) or the official one."""
    archive = ARCHIVES[spec["kind"]]
    return f"{(spec.get('base_url') or archive.base_url).rstrip('/')}/{archive.name}"


def archive_md5(spec: dict) -> str:
    """The MD5 the archive must have: the published one, unless the config pins another (a fixture)."""
    return spec.get("md5") or ARCHIVES[spec["kind"]].md5
