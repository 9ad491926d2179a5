import json

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from vitpeft.config import AugmentConfig
from vitpeft.data import arrays, prepare_dataset
from vitpeft.data.digits import build_digits
from vitpeft.data.glyphs import build_glyphs
from vitpeft.data.pipeline import BatchPreprocessor, affine_views
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


def marked_image(side: int, row: int, col: int) -> torch.Tensor:
    """A (3, side, side) float image: a faint texture and one bright pixel at (row, col)."""
    image = torch.linspace(0.0, 0.2, side * side).view(1, side, side).expand(3, -1, -1).clone()
    image[:, row, col] = 1.0
    return image


def brightest(image: torch.Tensor) -> tuple[int, int]:
    flat = int(image[0].argmax())
    return divmod(flat, image.shape[-1])


# (view side, shift right and down, flip) -> where the pixel at (5, 12) of a 20x20 image lands in a
# 16x16 output: a view of 0.8 is a 16-pixel crop from (2, 2), which each shift of 0.125 moves 2 px.
VIEWS = {
    (0.8, (0.0, 0.0), False): (3, 10),
    (0.8, (0.125, -0.125), False): (1, 12),
    (0.8, (-0.25, 0.25), False): (7, 6),
    (0.8, (0.125, 0.0), True): (3, 7),  # mirrored column 7, cropped to 5, then 2 px right
}


@pytest.mark.parametrize(("view", "shift", "flip"), list(VIEWS))
def test_affine_views_crop_shift_and_flip_as_torchvision(view, shift, flip):
    image = marked_image(20, 5, 12)
    out = affine_views(image[None], 16, torch.tensor([view]), torch.tensor([shift]), torch.tensor([flip]))[0]
    assert brightest(out) == VIEWS[(view, shift, flip)]
    # The same view in torchvision: flip, then move the crop window against the shift.
    source = TF.horizontal_flip(image) if flip else image
    top, left = 2 - round(shift[1] * 16), 2 - round(shift[0] * 16)
    padded = TF.pad(source, [4, 4, 4, 4])  # shifts of up to 4 px bring in black, as in affine_views
    torch.testing.assert_close(out, TF.crop(padded, top + 4, left + 4, 16, 16))


@pytest.mark.parametrize(
    ("view", "shift", "flip"),
    [(0.7, (0.1, -0.05), False), (1.25, (-0.1, 0.2), True), (1.0, (0.3, 0.0), False)],
)
def test_affine_views_equal_torchvision_affine(view, shift, flip):
    image = marked_image(20, 5, 12)
    out = affine_views(image[None], 20, torch.tensor([view]), torch.tensor([shift]), torch.tensor([flip]))[0]
    expected = TF.affine(
        TF.horizontal_flip(image) if flip else image,
        angle=0.0,
        translate=[shift[0] * 20, shift[1] * 20],
        scale=1 / view,
        shear=[0.0, 0.0],
        interpolation=TF.InterpolationMode.BILINEAR,
    )
    torch.testing.assert_close(out, expected)


def test_augment_scale_below_one_zooms_in_like_resized_crop():
    image = marked_image(20, 5, 12)
    batch = (image.permute(1, 2, 0)[None] * 255).round().to(torch.uint8)
    prep = BatchPreprocessor(32, (0.0,) * 3, (1.0,) * 3, AugmentConfig(scale=(0.64, 0.64)))
    out = prep(batch, train=True, generator=torch.Generator().manual_seed(0))[0]
    # An area of 0.64 is the central 16x16 square, resized to 32x32 (inside: the crop's own border
    # is interpolated with the pixels around it, which resized_crop clamps instead).
    expected = TF.resized_crop(
        batch[0].permute(2, 0, 1).float() / 255, 2, 2, 16, 16, [32, 32], antialias=False
    )
    torch.testing.assert_close(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1])
    assert out.min() > 0  # no black border: nothing outside the image is shown


def test_augment_translate_reaches_its_fraction_of_the_side():
    side, translate = 32, 0.25
    image = torch.zeros(1, side, side, 1, dtype=torch.uint8)
    image[0, 16, 16] = 255
    prep = BatchPreprocessor(side, (0.0,) * 3, (1.0,) * 3, AugmentConfig(translate=translate))
    out = prep(image.expand(512, -1, -1, -1), train=True, generator=torch.Generator().manual_seed(0))[:, 0]
    # Bilinear sampling keeps the marked pixel's centre of mass, so it measures each shift exactly.
    mass = out.sum((1, 2))
    grid = torch.arange(side, dtype=torch.float32) + 0.5
    moved = torch.stack([(out.sum(1) * grid).sum(1) / mass, (out.sum(2) * grid).sum(1) / mass], 1) - 16.5
    largest = translate * side  # 8 pixels
    assert moved.abs().max() <= largest + 1e-4
    assert (moved.abs().amax(0) > 0.95 * largest).all()  # both axes reach it, not half of it


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


def test_randaugment_takes_its_ops_and_magnitude_from_the_config():
    augment = AugmentConfig(randaugment=True, randaugment_num_ops=3, randaugment_magnitude=27)
    prep = BatchPreprocessor(8, (0.0,) * 3, (1.0,) * 3, augment)
    assert (prep.randaugment.num_ops, prep.randaugment.magnitude) == (3, 27)
    images = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    none = BatchPreprocessor(
        8, (0.0,) * 3, (1.0,) * 3, AugmentConfig(randaugment=True, randaugment_num_ops=0)
    )
    torch.testing.assert_close(none(images, train=True), images.permute(0, 3, 1, 2).float() / 255)


def box_of_partner(mixed: torch.Tensor, x: torch.Tensor, partner: int) -> torch.Tensor:
    """Pixels of ``mixed[0]`` taken from ``x[partner]`` instead of ``x[0]`` (all channels)."""
    return ((mixed[0] == x[partner]) & (mixed[0] != x[0])).all(0)


def test_cutmix_pastes_a_box_and_mixes_the_labels_by_its_area():
    prep = BatchPreprocessor(16, (0.0,) * 3, (1.0,) * 3, AugmentConfig(cutmix_alpha=1.0), num_classes=8)
    x, labels = torch.rand(8, 3, 16, 16), torch.arange(8)  # every pixel differs between images
    torch.manual_seed(0)
    for _ in range(5):
        mixed, target = prep.mix(x, labels)
        torch.testing.assert_close(target.sum(1), torch.ones(8))
        own = target[0, 0].item()
        if own == 1.0:
            continue  # an empty box
        partner = int(target[0, 1:].argmax()) + 1
        pasted = box_of_partner(mixed, x, partner)
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a box
        assert (mixed[0][:, ~pasted] == x[0][:, ~pasted]).all()  # the rest is the image's own
        assert target[0, partner].item() == pytest.approx(pasted.float().mean().item())  # by area
        assert own == pytest.approx(1 - pasted.float().mean().item())


@pytest.mark.parametrize(("switch", "cutmixed"), [(0.0, 0), (1.0, 40), (0.5, None)])
def test_the_switch_probability_chooses_cutmix_over_mixup(switch, cutmixed):
    augment = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_switch_prob=switch)
    prep = BatchPreprocessor(16, (0.0,) * 3, (1.0,) * 3, augment, num_classes=4)
    x, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    torch.manual_seed(0)
    kinds = []
    for _ in range(40):
        mixed, target = prep.mix(x, labels)
        partner = int(target[0, 1:].argmax()) + 1
        # CutMix leaves every pixel one image's; MixUp blends them all (unless its weight is 0 or 1).
        whole = (mixed[0] == x[0]).all(0) | (mixed[0] == x[partner]).all(0)
        kinds.append(bool(whole.all()))
    if cutmixed is None:
        assert 10 < sum(kinds) < 30
    else:
        assert sum(kinds) == cutmixed


def test_the_mix_probability_leaves_that_share_of_batches_unmixed():
    x, labels = torch.rand(4, 3, 8, 8), torch.arange(4)
    prep = BatchPreprocessor(
        8,
        (0.0,) * 3,
        (1.0,) * 3,
        AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.25),
        num_classes=4,
    )
    torch.manual_seed(0)
    unmixed = 0
    for _ in range(200):
        mixed, target = prep.mix(x, labels)
        if target is labels:  # passed through: integer labels, the images untouched
            assert mixed is x
            unmixed += 1
        else:
            assert target.shape == (4, 4)
    assert 120 < unmixed < 180  # 150 expected
    never = AugmentConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.0)
    assert BatchPreprocessor(8, (0.0,) * 3, (1.0,) * 3, never, num_classes=4).mix(x, labels)[1] is labels


def test_random_erasing_fills_one_box_per_image_with_noise_at_training_only():
    images = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    plain = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    erasing = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(erasing_prob=1.0))
    torch.manual_seed(0)
    erased, clean = erasing(images, train=True), plain(images, train=True)
    for image, original in zip(erased, clean, strict=True):
        changed = (image != original).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert 0 < changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    torch.testing.assert_close(erasing(images, train=False), plain(images, train=False))
    half = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(erasing_prob=0.5))
    torch.manual_seed(0)
    touched = (half(images, train=True) != clean).flatten(1).any(1)
    assert 0 < touched.sum() < 16


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mix_prob", 1.5),
        ("mix_prob", -0.1),
        ("cutmix_switch_prob", 2.0),
        ("erasing_prob", -0.25),
        ("cutmix_alpha", -1.0),
        ("randaugment_magnitude", 31),
        ("randaugment_num_ops", -1),
    ],
)
def test_augment_config_rejects_out_of_range_values_naming_them(key, value):
    with pytest.raises(ValueError, match=rf"augment\.{key} must .*got {value!r}"):
        AugmentConfig(**{key: value})
