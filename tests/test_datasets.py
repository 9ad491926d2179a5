"""Real datasets: download, checksums, conversion, against fixture archives on a loopback server."""

import tarfile

import numpy as np
import pytest
import torchvision
from fixtures import serve, write_cifar_archive, write_tinyimagenet_zip

from vitpeft.data import arrays, cifar, prepare_dataset
from vitpeft.data.download import ChecksumError, download, file_digests
from vitpeft.data.sources import ARCHIVES
from vitpeft.data.tinyimagenet import read_tinyimagenet


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    write_cifar_archive(folder / "cifar-10-python.tar.gz", "cifar10")
    return folder


def test_download_verifies_and_names_the_file(served, tmp_path):
    archive = served / "cifar-10-python.tar.gz"
    md5 = file_digests(archive)["md5"]
    with serve(served) as url:
        digests = download(f"{url}/{archive.name}", tmp_path / "dl" / archive.name, md5)
    assert digests == file_digests(archive)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [archive.name]


def test_checksum_mismatch_leaves_nothing_complete(served, tmp_path):
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    actual = file_digests(served / dest.name)["md5"]
    with serve(served) as url, pytest.raises(ChecksumError) as err:
        download(f"{url}/{dest.name}", dest, "0" * 32)
    assert str(dest.with_name(dest.name + ".part")) in str(err.value)
    assert "0" * 32 in str(err.value) and actual in str(err.value)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("ranges", [True, False])
def test_truncated_transfer_never_completes_and_a_rerun_finishes(served, tmp_path, ranges):
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    md5 = file_digests(served / dest.name)["md5"]
    with serve(served, truncate={dest.name}) as url, pytest.raises(OSError, match="rerun to resume"):
        download(f"{url}/{dest.name}", dest, md5)
    part = dest.with_name(dest.name + ".part")
    assert not dest.exists() and 0 < part.stat().st_size < (served / dest.name).stat().st_size
    with serve(served, ranges=ranges) as url:  # resumes with a Range request, or starts over
        assert download(f"{url}/{dest.name}", dest, md5)["md5"] == md5
    assert dest.exists() and not part.exists()


@pytest.mark.parametrize(
    ("variant", "reader"),
    [("cifar10", torchvision.datasets.CIFAR10), ("cifar100", torchvision.datasets.CIFAR100)],
)
def test_cifar_conversion_matches_torchvision(tmp_path, monkeypatch, variant, reader):
    archive = tmp_path / ARCHIVES[variant].name
    write_cifar_archive(archive, variant, per_class=2)
    data = read_cifar_checked(archive, variant)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    # torchvision checks each batch against the real files' MD5s; these are fixture batches.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    for split, train in (("train", True), ("test", False)):
        reference = reader(str(tmp_path), train=train, download=False)
        images, labels = data[split]
        np.testing.assert_array_equal(images, reference.data)
        np.testing.assert_array_equal(labels, np.asarray(reference.targets))
    assert data["class_names"] == reference.classes


def read_cifar_checked(archive, variant):
    data = cifar.read_cifar(archive, variant)
    assert data["train"][0].dtype == np.uint8 and data["train"][0].shape[1:] == (32, 32, 3)
    return data


def test_corrupt_and_truncated_archives_give_clear_errors(tmp_path):
    good = tmp_path / "good.tar.gz"
    write_cifar_archive(good, "cifar10")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=f"{path.name}: cannot read the cifar10 archive"):
            cifar.read_cifar(path, "cifar10")
    with pytest.raises(ValueError, match="member 'cifar-100-python/meta' is missing"):
        cifar.read_cifar(good, "cifar100")


def test_tinyimagenet_reads_train_and_uses_val_as_test(tmp_path):
    wnids = write_tinyimagenet_zip(tmp_path / "t.zip", classes=3, train_per_class=5, val_per_class=2)
    data = read_tinyimagenet(tmp_path / "t.zip")
    assert data["wnids"] == wnids and data["class_names"] == ["thing 0", "thing 1", "thing 2"]
    assert data["train"][0].shape == (15, 64, 64, 3) and np.bincount(data["train"][1]).tolist() == [5, 5, 5]
    assert data["test"][0].shape == (6, 64, 64, 3) and np.bincount(data["test"][1]).tolist() == [2, 2, 2]


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (
            "tiny-imagenet-200/train/n00000001/",
            "class folder tiny-imagenet-200/train/n00000001/images/ is missing",
        ),
        ("tiny-imagenet-200/val/val_annotations.txt", "val/val_annotations.txt is missing"),
        ("tiny-imagenet-200/val/images/val_0.JPEG", "val_0.JPEG is annotated but missing"),
        ("tiny-imagenet-200/wnids.txt", "wnids.txt is missing"),
    ],
)
def test_broken_tinyimagenet_trees_are_named(tmp_path, drop, message):
    write_tinyimagenet_zip(tmp_path / "t.zip", drop=drop)
    with pytest.raises(ValueError, match=message):
        read_tinyimagenet(tmp_path / "t.zip")


def test_prepare_cifar_keeps_the_official_test_split(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, "cifar10", per_class=10)
    spec = {
        "kind": "cifar10",
        "split_seed": 3,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "base_url": "http://mirror",
        "md5": file_digests(archive)["md5"],
    }
    manifest = prepare_dataset(spec, tmp_path / "out", archive=archive)
    official = read_cifar_checked(archive, "cifar10")
    test_images, _ = arrays.load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(test_images, official["test"][0])
    counts = manifest["counts_per_class"]
    assert counts["val"] == [10] * 10 and counts["train"] == [40] * 10  # 20% of 5 x 10 per class
    source = manifest["source"]
    assert source["url"] == "http://mirror/cifar-10-python.tar.gz"
    assert source["archive_sha256"] == file_digests(archive)["sha256"] and source["split_seed"] == 3
    with pytest.raises(ChecksumError, match="expected c58f30108f718f92721af3b95e74349a"):
        prepare_dataset({**spec, "md5": None}, tmp_path / "again", archive=archive)
