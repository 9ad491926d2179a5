"""A Hugging Face dataset, read through the ``datasets`` library: a hub id, a folder written by
``save_to_disk``, or a folder of parquet files (``train-*.parquet``, ``test-*.parquet``, ...).

The class names come from the label column's ``ClassLabel`` feature; a label column of other
values (strings, unlabelled integers) is indexed by its sorted distinct training values.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from vitpeft.data.image_folder import files_digest
from vitpeft.data.sources import KindSize, image_files
from vitpeft.io import sha256_file


def load(path: str) -> Any:
    """The ``DatasetDict`` at ``path`` (see the module docstring).

    Raises:
        ValueError: naming the path, when ``datasets`` cannot load it or it holds no splits.
    """
    import datasets

    local = Path(path)
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(path)
    except Exception as err:  # datasets raises many types: missing hub repo, bad files, no network
        raise ValueError(f"options.path: cannot load {path!r} with the datasets library ({err})") from err
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"options.path: {path} holds one split; save a DatasetDict of named splits")
    return loaded


@functools.cache
def _load_cached(path: str) -> Any:
    return load(path)


def _split(loaded: Any, option: str, name: str, path: str) -> Any:
    if name not in loaded:
        raise ValueError(f"options.{option}: {path} has no split {name!r}; it has {sorted(loaded)}")
    return loaded[name]


def _check_columns(split: Any, image_column: str, label_column: str, path: str) -> None:
    for option, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in split.column_names:
            raise ValueError(
                f"options.{option}: {path} has no column {column!r}; it has {split.column_names}"
            )


def _class_names(split: Any, label_column: str) -> tuple[list[str], dict[Any, int] | None]:
    """The class names and, for labels that are not a ClassLabel, the map from value to index."""
    import datasets

    feature = split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    values = sorted(set(split[label_column]))
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def _images(split: Any, column: str, image_size: int, where: str) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(split), image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(split[column]):
        try:
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image))
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{where}, row {i}: not a readable image ({err})") from err
        out[i] = np.asarray(rgb, dtype=np.uint8)
    return out


def _labels(split: Any, column: str, index: dict[Any, int] | None, where: str) -> np.ndarray:
    values = split[column]
    if index is None:
        return np.asarray(values, dtype=np.int64)
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:5]} do not occur in the training split")
    return np.asarray([index[v] for v in values], dtype=np.int64)


def build_hf_dataset(
    path: str,
    image_column: str,
    label_column: str,
    train_split: str = "train",
    test_split: str = "test",
    val_split: str | None = None,
    image_size: int | None = None,
) -> dict:
    """The dataset's train and test splits (and val, when ``val_split`` names one; else it is
    carved from train), as uint8 RGB images of side ``image_size``, with the class names.

    Raises:
        ValueError: naming the option (``options.<key>``) or the split and row that is wrong.
    """
    if image_size is None:
        raise ValueError("options.image_size: required when the dataset is prepared (the workflow fills it)")
    loaded = load(path)
    names = {"train": ("train_split", train_split), "test": ("test_split", test_split)}
    if val_split is not None:
        names["val"] = ("val_split", val_split)
    parts = {split: _split(loaded, option, name, path) for split, (option, name) in names.items()}
    for part in parts.values():
        _check_columns(part, image_column, label_column, path)
    class_names, index = _class_names(parts["train"], label_column)
    built: dict = {"class_names": class_names}
    for split, part in parts.items():
        where = f"{path} split {names[split][1]!r}"
        built[split] = (
            _images(part, image_column, image_size, where),
            _labels(part, label_column, index, where),
        )
    local = Path(path)
    source: dict[str, Any] = {"name": "hf_dataset", "path": path, "image_size": image_size}
    source["splits"] = {split: name for split, (_, name) in names.items()}
    if local.is_dir():
        files = image_files(local)
        source.update(files=len(files), files_sha256=files_digest(files, local))
    else:  # a hub dataset: the Arrow files datasets cached it in
        source["cache_sha256"] = {
            Path(f["filename"]).name: sha256_file(f["filename"])
            for part in parts.values()
            for f in part.cache_files
        }
    built["source"] = source
    return built


def hf_dataset_size(
    path: str,
    image_column: str,
    label_column: str,
    train_split: str = "train",
    test_split: str = "test",
    val_split: str | None = None,
) -> KindSize:
    """The sizes of the dataset's splits and its classes, for the study's compute estimate."""
    loaded = _load_cached(path)
    train = _split(loaded, "train_split", train_split, path)
    test = _split(loaded, "test_split", test_split, path)
    _check_columns(train, image_column, label_column, path)
    class_names, _ = _class_names(train, label_column)
    val = None if val_split is None else len(_split(loaded, "val_split", val_split, path))
    return KindSize(classes=len(class_names), train=len(train), test=len(test), val=val)
