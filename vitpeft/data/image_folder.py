"""A folder of images per class (as torchvision's ImageFolder reads it): ``root/train/<class>/*``,
``root/test/<class>/*`` and, optionally, ``root/val/<class>/*`` (else validation is carved from
train). Any format PIL reads; every image is converted to RGB and resized to ``image_size``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitpeft.data.sources import class_folders


def load_image(path: Path, image_size: int) -> np.ndarray:
    """One image file as uint8 ``(image_size, image_size, 3)``: RGB, resized bicubically.

    Raises:
        ValueError: naming the file, when PIL cannot read it.
    """
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err


def load_images(paths: list[Path], image_size: int) -> np.ndarray:
    """Images as one uint8 ``(N, image_size, image_size, 3)`` array."""
    if not paths:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack([load_image(p, image_size) for p in paths])


def files_digest(paths: list[Path], root: Path) -> str:
    """One SHA-256 over every file's path (relative to ``root``) and content: it changes when any
    file is added, removed, renamed or altered."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_image_folder(root: str | Path, image_size: int | None = None) -> dict:
    """The image folder's official train and test splits (and val, if it has one), with the
    class names: the folder names under ``train/``, sorted.

    Raises:
        ValueError: naming the path: a missing folder, a class in test or val that train lacks,
            an unreadable image.
    """
    if image_size is None:
        raise ValueError("options.image_size: required when the dataset is prepared (the workflow fills it)")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"options.root: {root} is not a folder")
    train = class_folders(root, "train")
    class_names = list(train)
    index = {name: i for i, name in enumerate(class_names)}
    splits = {"train": train, "test": class_folders(root, "test")}
    if (root / "val").is_dir():
        splits["val"] = class_folders(root, "val")
    built: dict = {"class_names": class_names}
    every_file = []
    for split, classes in splits.items():
        paths, labels = [], []
        for name, files in classes.items():
            if name not in index:
                raise ValueError(f"{root / split / name}: class {name!r} is not in {root / 'train'}")
            paths += files
            labels += [index[name]] * len(files)
        built[split] = (load_images(paths, image_size), np.asarray(labels, dtype=np.int64))
        every_file += paths
    built["source"] = {
        "name": "image_folder",
        "root": str(root),
        "image_size": image_size,
        "files": len(every_file),
        "files_sha256": files_digest(every_file, root),
    }
    return built
