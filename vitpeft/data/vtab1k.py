"""VTAB-1k (Zhai et al., 2019) in the common layout that VPT (Jia et al., ECCV 2022) and NOAH
(Zhang et al., 2022) read: ``root/<task>/`` holds ``train800.txt``, ``val200.txt``,
``train800val200.txt`` and ``test.txt``, each line ``relative/path label`` with the path relative
to ``root/<task>/``.

Prepared as train = train800, val = val200, test = test: tuning trains on train800 and picks on
val200, and the manifest's ``final_train`` tells the study's runs to train on train800 and val200
together (the train800val200 list, checked to be exactly their union), as VPT and NOAH do.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from vitpeft.data.image_folder import files_digest, load_images
from vitpeft.data.sources import VTAB_TASKS
from vitpeft.io import sha256_file

LISTS = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}


def read_list(path: Path, classes: int) -> list[tuple[str, int]]:
    """``(relative path, label)`` of each line of a split list.

    Raises:
        ValueError: naming the file and line: missing file, a line without a label, a label
            outside ``0 .. classes - 1``.
    """
    if not path.is_file():
        raise ValueError(f"{path}: split list is missing")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        label = int(fields[1])
        if not 0 <= label < classes:
            raise ValueError(f"{path}:{number}: label {label} is out of range 0..{classes - 1} for this task")
        entries.append((fields[0], label))
    return entries


def build_vtab1k(root: str | Path, task: str, image_size: int | None = None) -> dict:
    """One VTAB-1k task's train800, val200 and test splits (see the module docstring).

    Raises:
        ValueError: naming the task, folder, list file or image that is wrong.
    """
    if task not in VTAB_TASKS:
        raise ValueError(f"options.task: unknown VTAB-1k task {task!r}; known: {list(VTAB_TASKS)}")
    if image_size is None:
        raise ValueError("options.image_size: required when the dataset is prepared (the workflow fills it)")
    folder = Path(root) / task
    if not folder.is_dir():
        raise ValueError(f"options.root: {folder} is not a folder (expected root/<task>/ of VTAB-1k)")
    classes = VTAB_TASKS[task].classes
    lists = {split: read_list(folder / name, classes) for split, name in LISTS.items()}
    if Counter(lists["trainval"]) != Counter(lists["train"] + lists["val"]):
        raise ValueError(
            f"{folder / LISTS['trainval']}: is not the union of {LISTS['train']} and {LISTS['val']}"
        )
    built: dict = {"class_names": [str(label) for label in range(classes)]}
    every_file = []
    for split in ("train", "val", "test"):
        paths = [folder / relative for relative, _ in lists[split]]
        for path in paths:
            if not path.is_file():
                raise ValueError(f"{path}: listed in {folder / LISTS[split]} but missing")
        labels = np.asarray([label for _, label in lists[split]], dtype=np.int64)
        built[split] = (load_images(paths, image_size), labels)
        every_file += paths
    built["final_train"] = ["train", "val"]
    built["source"] = {
        "name": f"vtab1k/{task}",
        "task": task,
        "group": VTAB_TASKS[task].group,
        "root": str(Path(root)),
        "image_size": image_size,
        "lists_sha256": {name: sha256_file(folder / name) for name in LISTS.values()},
        "files": len(set(every_file)),
        "files_sha256": files_digest(sorted(set(every_file)), folder),
    }
    return built
