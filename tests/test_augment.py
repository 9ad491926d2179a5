"""Batched RandAugment and random erasing against the per-image references they replace:
torchvision's ``v2.RandAugment`` and timm's ``RandomErasing``."""

import random
import traceback
from collections import Counter

import pytest
import torch
from scipy import stats
from timm.data.random_erasing import RandomErasing
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2

from vitpeft.config import AugmentConfig
from vitpeft.data.augment import BatchRandAugment, random_erasing
from vitpeft.data.pipeline import BatchPreprocessor

SAMPLES = 10_000
SPACE = v2.RandAugment._AUGMENTATION_SPACE
# The full study's augmentation (config.yaml, studies.full), at a small image size.
FULL_AUGMENT = AugmentConfig(
    scale=(0.08, 1.0),
    translate=0.125,
    hflip=True,
    randaugment=True,
    randaugment_num_ops=2,
    randaugment_magnitude=27,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    erasing_prob=0.25,
)


def record_randaugment_ops(monkeypatch) -> Counter:
    """Count, per (op, magnitude), the images torchvision's RandAugment op function is given,
    and let them through unchanged."""
    seen = Counter()

    def record(self, image, transform_id, magnitude, interpolation, fill):
        seen[(transform_id, magnitude)] += 1 if image.ndim == 3 else image.shape[0]
        return image

    monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", record)
    return seen


def test_batched_randaugment_draws_ops_and_signs_as_torchvision_per_image(monkeypatch):
    num_ops, magnitude = 2, 27
    seen = record_randaugment_ops(monkeypatch)
    torch.manual_seed(0)
    reference = v2.RandAugment(num_ops, magnitude)
    for image in torch.zeros(SAMPLES, 3, 4, 6, dtype=torch.uint8):
        reference(image)
    per_image, seen = dict(seen), record_randaugment_ops(monkeypatch)
    BatchRandAugment(num_ops, magnitude)(
        torch.zeros(SAMPLES, 3, 4, 6, dtype=torch.uint8), generator=torch.Generator().manual_seed(0)
    )
    # The batch leaves Identity's images alone rather than calling torchvision on them.
    seen[("Identity", 0.0)] = num_ops * SAMPLES - sum(seen.values())
    batched = {key: count for key, count in seen.items() if count > 0}
    assert sum(batched.values()) == sum(per_image.values()) == num_ops * SAMPLES
    assert set(batched) == set(per_image)  # the same ops at exactly the same signed magnitudes
    categories = sorted(per_image, key=str)
    assert len(categories) == len(SPACE) + sum(signed for _, signed in SPACE.values())
    table = [[per_image[key] for key in categories], [batched[key] for key in categories]]
    assert stats.chi2_contingency(table).pvalue > 0.01
    # And each op has probability 1 / 14, split evenly between signs for a signed op.
    expected = [num_ops * SAMPLES / len(SPACE) / (2 if SPACE[name][1] else 1) for name, _ in categories]
    assert stats.chisquare(table[1], expected).pvalue > 0.01


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_image_of_a_batch_gets_what_torchvision_gives_it_for_its_op_and_sign(dtype):
    """Round 0 gives every (op, sign) to some image, round 1 the same ops in another order."""
    groups = [
        (op, negated)
        for op, (_, signed) in enumerate(SPACE.values())
        for negated in (False, True)[: 1 + signed]
    ]
    round_0 = torch.tensor(groups * 2)
    round_1 = round_0[torch.randperm(len(round_0), generator=torch.Generator().manual_seed(0))]
    ops, negated = (
        torch.stack([round_0[:, 0], round_1[:, 0]]),
        torch.stack([round_0[:, 1], round_1[:, 1]]).bool(),
    )
    augment = BatchRandAugment(num_ops=2, magnitude=27)
    reference = augment.reference
    images = torch.randint(
        0, 256, (len(round_0), 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    if dtype.is_floating_point:
        images = images.to(dtype) / 255
    batched = augment.apply(images, ops, negated)
    names = list(SPACE)
    for i, image in enumerate(images):
        for op, negate in zip(ops[:, i].tolist(), negated[:, i].tolist(), strict=True):
            magnitudes, _ = SPACE[names[op]]
            steps = magnitudes(31, 20, 24)
            magnitude = 0.0 if steps is None else float(steps[27]) * (-1 if negate else 1)
            image = reference._apply_image_or_video_transform(
                image, names[op], magnitude, interpolation=reference.interpolation, fill=reference._fill
            )
        assert torch.equal(batched[i], image), (i, [names[op] for op in ops[:, i]])


class DispatchedOps(TorchDispatchMode):
    """Counts the tensor ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_batch(batch_size: int) -> int:
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, FULL_AUGMENT, num_classes=10)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 16, 16, 3), dtype=torch.uint8)
    with DispatchedOps() as ops:
        x = prep(images, train=True, generator=torch.Generator().manual_seed(0))
        prep.mix(x, torch.arange(batch_size) % 10)
    return ops.count


def test_the_full_augmentation_issues_as_many_ops_for_256_images_as_for_32():
    # Not exactly as many: torchvision skips some work on an (op, sign) no image drew.
    assert ops_per_batch(256) <= 1.1 * ops_per_batch(32)


def test_the_full_augmentation_moves_its_cpu_draws_to_the_device_without_waiting(monkeypatch):
    """The ops and boxes drawn on the CPU reach the images' device through ``host_to_device``
    (pinned memory, a copy the host does not wait for, on CUDA); the normalization's constants
    move once per device. A plain ``.to(device)`` from the data code would make each step wait."""
    from vitpeft.data import augment, pipeline

    plain, moved = [], []

    def to(self, *args, _to=torch.Tensor.to, **kwargs):
        caller = traceback.extract_stack(limit=2)[0].filename
        if any(isinstance(a, torch.device) for a in args) and caller in (pipeline.__file__, augment.__file__):
            plain.append(caller)
        return _to(self, *args, **kwargs)

    def host_to_device(tensor, device):
        moved.append(device)
        return tensor.to(device)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(pipeline, "host_to_device", host_to_device, raising=False)
    monkeypatch.setattr(augment, "host_to_device", host_to_device, raising=False)
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, FULL_AUGMENT, num_classes=10)
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    prep(images, train=True, generator=torch.Generator().manual_seed(0))  # the constants move here
    plain.clear()
    prep(images, train=True, generator=torch.Generator().manual_seed(1))
    assert plain == [] and len(moved) > 2


def test_randaugment_and_erasing_follow_the_data_generator_only():
    """The same generator gives the same batch whatever torch's and Python's global generators
    hold, so a resumed run repeats its augmentation; erasing noise is the exception."""
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(randaugment=True, erasing_prob=0.5))
    erasing = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(erasing_prob=0.5))
    images = torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8)
    clean = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)(images, train=True)
    batches, boxes = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        randaugment_only = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(randaugment=True))
        batches.append(randaugment_only(images, train=True, generator=torch.Generator().manual_seed(0)))
        boxes.append(erasing(images, train=True, generator=torch.Generator().manual_seed(0)) != clean)
        prep(images, train=True, generator=torch.Generator().manual_seed(0))  # runs end to end
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], clean)
    assert torch.equal(boxes[0], boxes[1]) and boxes[0].any()


def box_of(changed: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the changed pixels of one image ``(H, W)``, None if none;
    asserts that they fill that box."""
    if not changed.any():
        return None
    rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
    top, left = int(rows.min()), int(cols.min())
    height, width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    assert changed.sum() == height * width  # a full rectangle
    return top, left, height, width


def test_random_erasing_draws_boxes_as_timm_and_leaves_the_rest_untouched():
    # 16 x 20: the widest and tallest draws do not fit, so the later attempts matter.
    height, width, probability = 16, 20, 0.25
    random.seed(0)
    torch.manual_seed(0)
    per_image = RandomErasing(probability, mode="pixel", device="cpu")(torch.zeros(SAMPLES, 3, height, width))
    x = torch.rand(SAMPLES, 3, height, width)
    batched = random_erasing(x, probability, torch.Generator().manual_seed(0))
    reference_boxes = [box_of((image != 0).any(0)) for image in per_image]
    boxes = [box_of((image != original).any(0)) for image, original in zip(batched, x, strict=True)]
    reference_boxes = [b for b in reference_boxes if b is not None]
    boxes = [b for b in boxes if b is not None]
    # The share of erased images (0.25, less the rare images whose 10 attempts all fail to fit):
    # within 4 standard errors of the difference of two such binomial shares.
    share, reference_share = len(boxes) / SAMPLES, len(reference_boxes) / SAMPLES
    assert abs(share - reference_share) < 4 * (2 * probability * (1 - probability) / SAMPLES) ** 0.5
    for measure in (
        lambda box: box[2] * box[3] / (height * width),  # area fraction
        lambda box: box[2] / box[3],  # aspect ratio
        lambda box: box[0] / (height - box[2]),  # position of the top, within where it fits
        lambda box: box[1] / (width - box[3]),
    ):
        assert (
            stats.ks_2samp([measure(b) for b in boxes], [measure(b) for b in reference_boxes]).pvalue > 0.01
        )


def test_random_erasing_replaces_every_channel_of_its_box_and_nothing_else():
    x = torch.rand(64, 3, 16, 20)
    erased = random_erasing(x, 1.0, torch.Generator().manual_seed(0))
    for image, original in zip(erased, x, strict=True):
        changed = image != original
        box = box_of(changed.any(0))
        assert box is not None and torch.equal(changed, changed.all(0, keepdim=True).expand_as(changed))
        outside = ~changed.any(0)
        assert torch.equal(image[:, outside], original[:, outside])
    assert torch.equal(random_erasing(x, 0.0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("probability", [0.25, 1.0])
def test_random_erasing_leaves_its_input_unchanged(probability):
    x = torch.rand(8, 3, 16, 16)
    before = x.clone()
    random_erasing(x, probability, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
