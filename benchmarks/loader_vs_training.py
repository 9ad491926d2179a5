"""Loader throughput against training throughput, measured in one run (a benchmark, not a test).

The loader is what the trainer uses: uint8 CIFAR-sized images held in memory, gathered, resized
to 224 px with a random affine augmentation and normalized, in batches, on the training device.
The training step is a full AdamW step of deit_tiny at 224 px on the same device. The goal is a
loader at least 10x faster than training, so the data never limits training speed.

    python benchmarks/loader_vs_training.py [--batch-size 32] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from vitpeft.config import AugmentConfig, ModelSpec
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.models import create_model


def images_per_second(step, batch_size: int, steps: int) -> float:
    step()  # warm-up: allocations, kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)

    images = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
    ).to(device)
    labels = torch.randint(0, 10, (4096,), device=device)
    model = create_model(ModelSpec("deit_tiny", img_size=224, patch_size=16), num_classes=10).to(device)
    cfg = model.pretrained_cfg
    preprocess = BatchPreprocessor(
        224, cfg["mean"], cfg["std"], AugmentConfig(scale=(0.8, 1.0), translate=0.125, hflip=True)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def load():
        index = torch.randint(0, len(images), (args.batch_size,), generator=generator).to(device)
        batch = preprocess(images[index], train=True, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch, labels[index]

    fixed = load()

    def train_step():
        x, y = fixed
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    loader = images_per_second(load, args.batch_size, args.steps * 10)
    training = images_per_second(train_step, args.batch_size, args.steps)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, deit_tiny at 224 px")
    print(f"loader   {loader:10.1f} img/s")
    print(f"training {training:10.1f} img/s")
    print(f"ratio    {loader / training:10.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
