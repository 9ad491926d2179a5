"""What recording gradient stability costs per optimizer step, against the step (a benchmark, not a
test). Goal: under 2% of step time.

The step: ``vitpeft.train.fit`` training ``--method`` (default LoRA r=8, the figure's reference)
on the demo's model (``vit_w64_d4``: width 64, 4 blocks, at 8 px with 4 px patches, batch 32, where
the work per step is smallest and any fixed cost weighs most), on random images, timed over
``--epochs`` x ``--steps`` steps.

The recording: exactly the work the trainer adds per step for it, repeated ``--repeats`` times on the
same device and timed alone, since a difference of two whole trainings could not resolve 2% on a
shared machine. That is the step's mean loss kept on the device, ``StabilityMeter.record`` (spike
test against the window's median, the four sums) and the per-epoch ``epoch_summary`` (its one host
sync) spread over the epoch's steps. With clipping on (every config here), the gradient norm is
what ``clip_grad_norm_`` computed anyway; with ``grad_clip: 0`` the trainer computes it for the
meter, which is timed as well, on the model's real gradients.

Time is the process's CPU time on CPU (other jobs on a shared machine do not add to it) and
wall-clock time after a synchronize on CUDA.

    python benchmarks/gradient_stability_cost.py [--device cpu|cuda] [--threads 1] [--steps 20]
                                                 [--epochs 2] [--repeats 2000] [--method lora_r8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import torch

from vitpeft.config import ModelSpec, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.methods import method_config, prepare_model
from vitpeft.methods.base import MethodContext
from vitpeft.models import create_model
from vitpeft.stability import StabilityMeter
from vitpeft.train import Split, fit

BATCH, CLASSES = 32, 10
DEMO = ModelSpec("vit_w64_d4", img_size=8, patch_size=4)


class Clock:
    """Seconds of CPU time on CPU; wall-clock time once the device is idle on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


def train(device: torch.device, method: str, epochs: int, steps: int):
    """Seconds per optimizer step of ``fit``, and the trained model (its gradients still set)."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (steps * BATCH, 8, 8, 3), dtype=np.uint8)).to(device)
    labels = torch.from_numpy(rng.integers(0, CLASSES, steps * BATCH)).to(device)
    torch.manual_seed(0)
    model = create_model(DEMO, num_classes=CLASSES).to(device)
    context = MethodContext(total_steps=epochs * steps, device=device)
    prepared = prepare_model(model, method_config(method), context)
    prepared.model.to(device)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, eval_batch_size=BATCH, warmup_epochs=0.5)
    preprocess = BatchPreprocessor(8, (0.5,) * 3, (0.5,) * 3)
    val = Split(images[:BATCH], labels[:BATCH])  # one batch: the epoch is nearly all training steps
    clock = Clock(device)
    with contextlib.redirect_stderr(io.StringIO()):
        started = clock()
        fit(prepared, Split(images, labels), val, preprocess, cfg, 1e-3, 0.05, seed=0)
        elapsed = clock() - started
    return elapsed / (epochs * steps), prepared.model


def recording(device: torch.device, steps_per_epoch: int, repeats: int) -> float:
    """Seconds per step of the trainer's recording work, clipping on."""
    meter = StabilityMeter(device, grad_clip=1.0, num_classes=10)
    loss = torch.tensor(2.3, device=device)  # a micro-batch's task loss, as autocast leaves it
    norm = torch.tensor(0.7, device=device)  # what clip_grad_norm_ returned
    clock = Clock(device)
    started = clock()
    for step in range(repeats):
        device_loss_sum = torch.zeros((), device=device)  # as in fit's forward_backward
        device_loss_sum += loss * BATCH
        meter.record(device_loss_sum / BATCH, norm)
        if (step + 1) % steps_per_epoch == 0:
            meter.epoch_summary()
    return (clock() - started) / repeats


def unclipped_norm(device: torch.device, model: torch.nn.Module, repeats: int) -> float:
    """Seconds per step of the global norm the trainer computes for the meter when clipping is off."""
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    clock = Clock(device)
    started = clock()
    for _ in range(repeats):
        torch.nn.utils.get_total_norm(grads)
    return (clock() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", default="lora_r8")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2000, help="timed repetitions of the recording")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    recording(device, args.steps, min(100, args.repeats))  # warm-up: first calls allocate
    step_s, model = train(device, args.method, args.epochs, args.steps)
    record_s = recording(device, args.steps, args.repeats)
    norm_s = unclipped_norm(device, model, args.repeats)
    print(
        f"gradient-stability recording on {device} ({torch.get_num_threads()} thread(s)): {args.method} on "
        f"vit_w64_d4 at 8 px, batch {BATCH}, {args.epochs} epochs x {args.steps} steps"
    )
    print(f"  training step (fit)            {1e3 * step_s:9.3f} ms")
    print(f"  recording, clipping on         {1e6 * record_s:9.1f} us   ratio {record_s / step_s:.4f}")
    print(
        f"  recording, clipping off        {1e6 * (record_s + norm_s):9.1f} us   "
        f"ratio {(record_s + norm_s) / step_s:.4f} (with the norm it computes)"
    )


if __name__ == "__main__":
    main()
