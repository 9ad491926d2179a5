import json

import numpy as np
import pytest
import torch

from vitpeft.config import AugmentConfig
from vitpeft.data import arrays, prepare_dataset
from vitpeft.data.digits import build_digits
from vitpeft.data.glyphs import build_glyphs
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.data.shapes import SHAPE_CLASSES, build_shapes


def test_digits_are_real_uint8_images():
    images, labels, classes, _ = build_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and classes == [str(c) for c in range(10)]
    assert np.bincount(labels).min() >= 170


def test_split_is_stratified_disjoint_and_reproducible():
    labels = np.repeat(np.arange(10), 50)
    split = arrays.stratified_split(labels, 0.2, 0.2, seed=3)
    assert sum(len(v) for v in split.values()) == len(labels)
    assert len(np.unique(np.concatenate(list(split.values())))) == len(labels)
    assert (np.bincount(labels[split["test"]]) == 10).all()
    again = arrays.stratified_split(labels, 0.2, 0.2, seed=3)
    assert all((split[k] == again[k]).all() for k in split)
    other = arrays.stratified_split(labels, 0.2, 0.2, seed=4)
    assert not (split["test"] == other["test"]).all()


def test_prepare_dataset_writes_splits_and_checksummed_manifest(tmp_path):
    spec = {"kind": "sklearn_digits", "split_seed": 0, "val_fraction": 0.2, "test_fraction": 0.2}
    manifest = prepare_dataset(spec, tmp_path)
    counts = {k: sum(v) for k, v in manifest["counts_per_class"].items()}
    assert counts == {"train": 1077, "val": 360, "test": 360}
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    arrays.verify(tmp_path)
    images, labels = arrays.load_split(tmp_path, "val")
    assert images.shape == (360, 8, 8, 1) and labels.dtype == np.int64
    # A second build is byte-identical: same checksums.
    assert prepare_dataset(spec, tmp_path / "again")["sha256"] == manifest["sha256"]
    (tmp_path / "test.npz").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="test.npz: SHA-256"):
        arrays.verify(tmp_path)


def test_unknown_dataset_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'cifar11'"):
        prepare_dataset({"kind": "cifar11"}, tmp_path)


def test_shapes_are_deterministic_and_balanced():
    a, la, names, _ = build_shapes(64, 16, seed=0)
    b, lb, _, _ = build_shapes(64, 16, seed=0)
    c, _, _, _ = build_shapes(64, 16, seed=1)
    assert (a == b).all() and (la == lb).all() and not (a == c).all()
    assert names == list(SHAPE_CLASSES)
    assert np.bincount(la, minlength=len(names)).tolist() == [4] * len(names)
    assert a.std() > 20  # the strokes are visible over the texture


def test_glyphs_are_deterministic_balanced_block_counts():
    a, la, names, source = build_glyphs(72, 8, seed=0)
    b, lb, _, _ = build_glyphs(72, 8, seed=0)
    c, _, _, _ = build_glyphs(72, 8, seed=1)
    assert a.shape == (72, 8, 8, 1) and a.dtype == np.uint8
    assert (a == b).all() and (la == lb).all() and not (a == c).all()
    assert "".join(names) == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" and source["characters"] == "".join(names)
    assert np.bincount(la, minlength=len(names)).tolist() == [2] * len(names)
    # Like the UCI digits: each pixel counts the set pixels of a 4x4 block, 0..16, spread over uint8.
    levels = np.round(np.arange(17) * 255 / 16)
    assert np.isin(a, levels).all() and a.max() == 255 and a.min() == 0


def test_rendered_digits_resemble_the_handwritten_ones():
    """A nearest-neighbour classifier that saw only rendered digits reads most real ones (chance: 10%)."""
    from sklearn.neighbors import KNeighborsClassifier

    glyphs, glyph_labels, names, _ = build_glyphs(2000, 8, seed=0, characters="0123456789")
    digits, digit_labels, digit_names, _ = build_digits()
    assert names == digit_names
    knn = KNeighborsClassifier(5).fit(glyphs.reshape(len(glyphs), -1), glyph_labels)
    assert (knn.predict(digits.reshape(len(digits), -1)) == digit_labels).mean() > 0.5


def test_glyphs_are_a_dataset_kind_and_check_their_characters(tmp_path):
    spec = {
        "kind": "font_glyphs",
        "options": {"num_images": 120, "image_size": 8, "seed": 0, "characters": "0123"},
        "split_seed": 0,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
    }
    manifest = prepare_dataset(spec, tmp_path)
    assert (
        manifest["class_names"] == ["0", "1", "2", "3"]
        and manifest["source"]["name"] == "vitpeft.data.glyphs"
    )
    assert {k: sum(v) for k, v in manifest["counts_per_class"].items()} == {
        "train": 60,
        "val": 30,
        "test": 30,
    }
    with pytest.raises(ValueError, match="distinct"):
        build_glyphs(8, 8, seed=0, characters="0010")


def test_preprocessor_eval_resizes_and_normalizes():
    prep = BatchPreprocessor(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    images = torch.full((2, 8, 8, 1), 255, dtype=torch.uint8)
    out = prep(images, train=False)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_preprocessor_augments_each_image_differently_and_reproducibly():
    prep = BatchPreprocessor(
        16, (0.0,) * 3, (1.0,) * 3, AugmentConfig(scale=(0.8, 1.2), translate=0.2, hflip=True)
    )
    images = torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8).expand(4, -1, -1, -1)
    first = prep(images, train=True, generator=torch.Generator().manual_seed(0))
    again = prep(images, train=True, generator=torch.Generator().manual_seed(0))
    assert first.shape == (4, 3, 16, 16)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first[0], first[1])


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="translate"):
        AugmentConfig(translate=1.5)


def test_randaugment_is_per_image_and_follows_the_seed():
    prep = BatchPreprocessor(8, (0.0,) * 3, (1.0,) * 3, AugmentConfig(randaugment=True))
    images = torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8).expand(16, -1, -1, -1)
    torch.manual_seed(0)
    first = prep(images, train=True)
    torch.manual_seed(0)
    torch.testing.assert_close(prep(images, train=True), first)
    assert len({tuple(img.flatten().tolist()) for img in first}) > 1  # not one op for the whole batch
    torch.testing.assert_close(prep(images, train=False), images.permute(0, 3, 1, 2).float() / 255)


def test_mixup_gives_convex_images_and_soft_targets():
    prep = BatchPreprocessor(8, (0.0,) * 3, (1.0,) * 3, AugmentConfig(mixup_alpha=0.4), num_classes=10)
    x = torch.rand(6, 3, 8, 8)
    labels = torch.arange(6)
    mixed, target = prep.mix(x, labels)
    assert target.shape == (6, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(6))
    weight = target[0, 0].item()  # image 0 mixed with its neighbour in the batch, by that weight
    partner = int(target[0, 1:].argmax()) + 1 if weight < 1 else 0
    torch.testing.assert_close(mixed[0], weight * x[0] + (1 - weight) * x[partner])
    with pytest.raises(ValueError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=-1)
    plain = BatchPreprocessor(8, (0.0,) * 3, (1.0,) * 3)
    assert plain.mix(x, labels)[1] is labels
