"""Datasets by name (the config's ``kind``), prepared into the on-disk format of :mod:`.arrays`.

A builder returns the class names, a source record and either one ``pool`` of labelled images
(split three ways here) or the official ``train`` and ``test`` splits (validation is carved from
train). A new dataset is one builder plus one entry in :data:`DATASETS`; one that comes from an
archive also gets an entry in :data:`vitpeft.data.sources.ARCHIVES` (file, published MD5, URL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitpeft.data import cifar, tinyimagenet
from vitpeft.data.arrays import stratified_holdout, stratified_split, write_splits
from vitpeft.data.digits import build_digits
from vitpeft.data.download import verify_md5
from vitpeft.data.glyphs import build_glyphs
from vitpeft.data.hf_dataset import build_hf_dataset
from vitpeft.data.image_folder import build_image_folder
from vitpeft.data.shapes import build_shapes
from vitpeft.data.sources import ARCHIVES, DATASET_KINDS, archive_md5, archive_url
from vitpeft.data.vtab1k import build_vtab1k


@dataclass(frozen=True)
class DatasetKind:
    build: Callable[..., dict[str, Any]]
    from_archive: bool = False


def _pool(build):
    def wrapped(**options):
        images, labels, class_names, source = build(**options)
        return {"pool": (images, labels), "class_names": class_names, "source": source}

    return wrapped


def _cifar(variant):
    def build(archive: Path):
        return {**cifar.read_cifar(archive, variant), "source": {"name": variant}}

    return build


def _tinyimagenet(archive: Path):
    data = tinyimagenet.read_tinyimagenet(archive)
    return {**data, "source": {"name": "tinyimagenet", "wnids": data.pop("wnids")}}


DATASETS: dict[str, DatasetKind] = {
    "sklearn_digits": DatasetKind(_pool(build_digits)),
    "synthetic_shapes": DatasetKind(_pool(build_shapes)),
    "font_glyphs": DatasetKind(_pool(build_glyphs)),
    "cifar10": DatasetKind(_cifar("cifar10"), from_archive=True),
    "cifar100": DatasetKind(_cifar("cifar100"), from_archive=True),
    "tinyimagenet": DatasetKind(_tinyimagenet, from_archive=True),
    "image_folder": DatasetKind(build_image_folder),
    "vtab1k": DatasetKind(build_vtab1k),
    "hf_dataset": DatasetKind(build_hf_dataset),
}
assert set(DATASETS) == set(DATASET_KINDS)


def prepare_dataset(
    spec: dict[str, Any], out_dir: str | Path, archive: str | Path | None = None
) -> dict[str, Any]:
    """Build the dataset described by one ``datasets:`` entry of the config and write its splits.

    Args:
        spec: the config entry: ``kind``, ``split_seed``, ``val_fraction``, ``test_fraction`` and
            the builder's own keyword arguments under ``options``.
        out_dir: folder that receives ``{train,val,test}.npz`` and ``manifest.json``.
        archive: the downloaded archive, for kinds that come from one; its MD5 is checked again.
    """
    if spec["kind"] not in DATASETS:
        raise ValueError(f"unknown dataset kind {spec['kind']!r}; known: {list(DATASETS)}")
    kind = DATASETS[spec["kind"]]
    seed, val_fraction = spec["split_seed"], spec["val_fraction"]
    source: dict[str, Any] = {"split_seed": seed, "val_fraction": val_fraction}
    if kind.from_archive:
        if archive is None:
            raise ValueError(f"dataset kind {spec['kind']!r} is built from an archive; none was given")
        digests = verify_md5(archive, archive_md5(spec))
        built = kind.build(archive=Path(archive), **spec.get("options", {}))
        source.update(
            url=archive_url(spec),
            archive=ARCHIVES[spec["kind"]].name,
            archive_md5=digests["md5"],
            archive_sha256=digests["sha256"],
        )
    else:
        built = kind.build(**spec.get("options", {}))
    source.update(built["source"])
    if "pool" in built:
        images, labels = built["pool"]
        split_index = stratified_split(labels, val_fraction, spec["test_fraction"], seed)
        source["test_fraction"] = spec["test_fraction"]
    elif "val" in built:  # every split given: none is carved
        parts = [built[split] for split in ("train", "val", "test")]
        images, labels = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
        ends = np.cumsum([0] + [len(y) for _, y in parts])
        split_index = {
            split: np.arange(ends[i], ends[i + 1]) for i, split in enumerate(("train", "val", "test"))
        }
        source.pop("val_fraction")
        source["test"] = source["val"] = "official"
    else:
        (train_x, train_y), (test_x, test_y) = built["train"], built["test"]
        # The official test split stays the test set; validation is carved from train.
        train_idx, val_idx = stratified_holdout(train_y, val_fraction, seed)
        images, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
        split_index = {"train": train_idx, "val": val_idx, "test": len(train_y) + np.arange(len(test_y))}
        source["test"] = "official"
    return write_splits(
        out_dir, images, labels, split_index, built["class_names"], source, built.get("final_train")
    )
