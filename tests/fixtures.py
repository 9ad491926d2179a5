"""Fixture archives in the exact official formats, and a loopback HTTP server that serves them."""

from __future__ import annotations

import io
import pickle
import tarfile
import threading
import zipfile
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from vitpeft.data import cifar, tinyimagenet


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(path: Path, variant: str, per_class: int = 4, seed: int = 0) -> dict:
    """A CIFAR python tarball: pickled batches of uint8 rows in channel-major order."""
    spec = cifar.VARIANTS[variant]
    classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(seed)
    names = [f"class_{i}" for i in range(classes)]
    with tarfile.open(path, "w:gz") as tar:
        meta_file, meta_key = spec["meta"]
        _add_bytes(tar, f"{spec['folder']}/{meta_file}", pickle.dumps({meta_key: names}))
        for split in ("train", "test"):
            for batch in spec[split]:
                labels = np.repeat(np.arange(classes), per_class)
                rng.shuffle(labels)
                data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
                content = {"data": data, spec["label_key"]: labels.tolist(), "batch_label": batch}
                _add_bytes(tar, f"{spec['folder']}/{batch}", pickle.dumps(content))
    return {"class_names": names}


def _jpeg(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tinyimagenet_zip(
    path: Path, classes: int = 3, train_per_class: int = 5, val_per_class: int = 2, drop: str | None = None
) -> list[str]:
    """A TinyImageNet zip: wnids.txt, words.txt, train/<wnid>/images, val/images + annotations.

    ``drop`` leaves out one member (or every member under a prefix), to test broken trees.
    """
    rng = np.random.default_rng(0)
    root = tinyimagenet.ROOT
    wnids = [f"n{i:08d}" for i in range(classes)]
    members = {
        f"{root}/wnids.txt": "\n".join(wnids).encode(),
        f"{root}/words.txt": "\n".join(f"{w}\tthing {i}, other" for i, w in enumerate(wnids)).encode(),
    }
    annotations = []
    for c, wnid in enumerate(wnids):
        for k in range(train_per_class):
            members[f"{root}/train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(rng)
        members[f"{root}/train/{wnid}/{wnid}_boxes.txt"] = b""
        for k in range(val_per_class):
            name = f"val_{c * val_per_class + k}.JPEG"
            members[f"{root}/val/images/{name}"] = _jpeg(rng)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    members[f"{root}/val/val_annotations.txt"] = "\n".join(annotations).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            if drop is None or not name.startswith(drop):
                archive.writestr(name, payload)
    return wnids


class FixtureHandler(SimpleHTTPRequestHandler):
    """Serves a folder with Range support; ``truncate`` names files sent cut in half."""

    truncate: set[str] = set()
    ranges = True

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header and self.ranges:
            start = int(header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path.name in self.truncate:
            body = body[: len(body) // 2]  # the connection closes early: Content-Length is not met
            self.close_connection = True
        self.wfile.write(body)


@contextmanager
def serve(folder: Path, truncate: set[str] | None = None, ranges: bool = True):
    """A loopback HTTP server on a free port for ``folder``; yields its base URL."""
    handler = type("Handler", (FixtureHandler,), {"truncate": set(truncate or ()), "ranges": ranges})
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _class_image(label: int, rng, size: int = 12, mode: str = "RGB") -> Image.Image:
    """A small image whose mean colour says its class, with noise."""
    base = np.zeros((size, size, 3), dtype=np.float64)
    base[..., label % 3] = 200.0
    base[: size // 2, :, (label + 1) % 3] = 120.0 * (label // 3)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


IMAGE_FOLDER_COUNTS = {"train": {"cat": 10, "dog": 6, "owl": 4}, "test": {"cat": 3, "dog": 3, "owl": 2}}


def write_image_folder(root: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """``root/{train,test}/<class>/``: unequal classes, PNG and JPEG files, and one grey-scale
    image (``train/dog/grey.png``). Returns the images per split and class."""
    rng = np.random.default_rng(seed)
    for split, counts in IMAGE_FOLDER_COUNTS.items():
        for label, (name, count) in enumerate(counts.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                fmt = "png" if i % 2 else "jpg"
                _class_image(label, rng).save(folder / f"{i}.{fmt}")
    _class_image(1, rng, mode="L").save(root / "train" / "dog" / "grey.png")
    counts = {split: dict(c) for split, c in IMAGE_FOLDER_COUNTS.items()}
    counts["train"]["dog"] += 1
    return counts


VTAB_FIXTURE_SIZES = {"train800.txt": 8, "val200.txt": 4, "test.txt": 6}


def write_vtab_tree(root: Path, tasks: dict[str, int], seed: int = 0) -> None:
    """The VTAB-1k layout for each task (name -> its classes): ``root/<task>/images/*.jpg`` and the
    four split lists, train800val200 being train800 followed by val200; sizes of
    :data:`VTAB_FIXTURE_SIZES`, every class in every list."""
    rng = np.random.default_rng(seed)
    for task, classes in tasks.items():
        folder = root / task
        (folder / "images").mkdir(parents=True)
        lines = {}
        for name, count in VTAB_FIXTURE_SIZES.items():
            lines[name] = []
            for i in range(count):
                label = i % classes
                relative = f"images/{name.split('.')[0]}_{i}.jpg"
                _class_image(label, rng).save(folder / relative)
                lines[name].append(f"{relative} {label}")
        lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
        for name, entries in lines.items():
            (folder / name).write_text("\n".join(entries) + "\n")


HF_CLASSES = ["left", "right"]


def write_hf_dataset(path: Path, train: int = 12, test: int = 6, seed: int = 0) -> None:
    """A ``DatasetDict`` (train, test) of RGB and grey-scale images with a ClassLabel column,
    written with ``save_to_disk``."""
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=HF_CLASSES)})

    def split(count):
        labels = [i % len(HF_CLASSES) for i in range(count)]
        images = [_class_image(y, rng, mode="L" if i == 0 else "RGB") for i, y in enumerate(labels)]
        return datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)

    datasets.DatasetDict({"train": split(train), "test": split(test)}).save_to_disk(str(path))
