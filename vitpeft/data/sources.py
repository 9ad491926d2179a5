"""Dataset kinds and the official archives they come from. Imports nothing heavy, so the workflow
can validate its config and plan downloads without loading the data stack."""

from __future__ import annotations

from dataclasses import dataclass


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
