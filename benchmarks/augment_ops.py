"""Tensor ops dispatched per training batch by the full study's augmentation, at two batch sizes (a
benchmark, not a test). Goal: no more ops at batch 128 than at batch 32, give or take 10%.

The augmentation is config.yaml's ``studies.full`` recipe for CIFAR-10 (RandAugment 2 ops at
magnitude 27, random erasing 0.25, MixUp 0.8 or CutMix 1.0, crop scale [0.08, 1], flips): one
batch of random uint8 images of ``--img-size`` pixels goes through ``BatchPreprocessor`` and its
``mix``, as ``vitpeft.train.fit`` sends it, under a ``TorchDispatchMode`` that counts every op. On a
GPU each op is at least one kernel launch, so a count that grows with the batch is time that
grows with it before the model sees the batch.

For comparison, the two stages that ran per image before (torchvision's ``v2.RandAugment`` called
per image, timm's ``RandomErasing`` looping over the batch) are counted and timed on the same batch,
next to their batched replacements. Times are wall-clock seconds of one call after one warm-up,
after a synchronize on CUDA.

    python benchmarks/augment_ops.py [--img-size 224] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2

from vitpeft.config import augment_config
from vitpeft.data.augment import random_erasing
from vitpeft.data.pipeline import BatchPreprocessor

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
BATCH_SIZES = (32, 128)
CLASSES = 10
WHOLE_BATCH = "whole batch, batched"


class DispatchedOps(TorchDispatchMode):
    """Counts the tensor ops dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def measure(work: Callable[[], object], device: torch.device) -> tuple[int, float]:
    """Ops dispatched by one call of ``work``, and the seconds of another (after a warm-up)."""
    work()
    with DispatchedOps() as ops:
        work()

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    started = now()
    work()
    return ops.count, now() - started


def stages(prep: BatchPreprocessor, batch_size: int, side: int, device: torch.device) -> dict[str, Callable]:
    """One batch's work, stage by stage: the per-image references and their batched replacements,
    then the whole batch as training preprocesses and mixes it."""
    augment = prep.augment
    per_image_randaugment = v2.RandAugment(augment.randaugment_num_ops, augment.randaugment_magnitude)
    per_image_erasing = RandomErasing(augment.erasing_prob, mode="pixel", device=device)
    torch.manual_seed(0)
    random.seed(0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, side, side, 3), dtype=torch.uint8, device=device)
    labels = torch.arange(batch_size, device=device) % CLASSES
    nchw = images.permute(0, 3, 1, 2)
    normalized = prep(images, train=False)
    return {
        "RandAugment, per image": lambda: torch.stack([per_image_randaugment(image) for image in nchw]),
        "RandAugment, batched": lambda: prep.randaugment(nchw, generator),
        "erasing, per image": lambda: per_image_erasing(normalized.clone()),
        "erasing, batched": lambda: random_erasing(normalized, augment.erasing_prob, generator),
        WHOLE_BATCH: lambda: prep.mix(prep(images, train=True, generator=generator), labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--img-size", type=int, default=224, help="side of the input and model images")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device, side = torch.device(args.device), args.img_size

    full = yaml.safe_load(CONFIG.read_text())["studies"]["full"]["overrides"]
    augment = augment_config(full["datasets"]["cifar10"])
    prep = BatchPreprocessor(side, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, augment, num_classes=CLASSES)
    print(f"{augment}\nat {side} px on {device}; ops dispatched (seconds of one call)")
    whole_batch = {}
    for batch_size in BATCH_SIZES:
        for name, work in stages(prep, batch_size, side, device).items():
            count, seconds = measure(work, device)
            print(f"batch {batch_size:3d}  {name:24s} {count:7d} ops  ({seconds:.4f} s)")
            if name == WHOLE_BATCH:
                whole_batch[batch_size] = count
    first, second = (whole_batch[b] for b in BATCH_SIZES)
    print(f"ops per batch: {first} at batch {BATCH_SIZES[0]}, {second} at batch {BATCH_SIZES[1]}")


if __name__ == "__main__":
    main()
