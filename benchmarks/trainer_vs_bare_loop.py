"""Our trainer against a bare PyTorch loop, and the memory of the methods (a benchmark, not a test).

Speed: ``vitpeft.train.fit`` against a plain loop doing the same work: the same model (full
fine-tuning of a 12-block DeiT-tiny at the demo's 16 px with 4 px patches, where the trainer's
per-step overhead weighs most), the same batch, preprocessing and augmentation, AdamW with
gradient clipping and a learning-rate schedule, and the same small validation pass per epoch. The
two alternate, several rounds, and the best round of each is compared. Time is the process's CPU
time, not wall-clock: with one thread it is the compute itself, and other jobs on a shared machine
do not add to it (a save's file write is partly kernel time, which CPU time includes). The trainer runs once without resume
states and once saving one every ``--every`` steps (default: every step, so that the cost of a
save stands out of the noise); the cost of one save and its share at the config's
``checkpoint_every`` follow from the two. Goal: trainer / bare >= 0.97.

Memory: two training steps of ``full``, ``lora_r8``, ``qlora4_r8`` and ``qalora4_r8`` (DeiT-tiny
at 224 px, or ``--memory-model``), each in a fresh subprocess, so that none inherits another's
allocations. Printed: the peak resident set of the training steps (``train_peak_mem_mb``, see
``vitpeft.memory``), and that peak above the process's peak before the model is built.

    python benchmarks/trainer_vs_bare_loop.py [--threads 1] [--rounds 3] [--steps 20] [--every 1]
                                              [--memory-model deit_tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitpeft.config import AugmentConfig, ModelSpec, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.memory import PhasePeaks
from vitpeft.methods import method_config, prepare_model
from vitpeft.methods.base import MethodContext
from vitpeft.models import create_model
from vitpeft.resume import ResumeFile
from vitpeft.train import Split, fit

BATCH, EPOCHS, CHECKPOINT_EVERY = 32, 2, 500  # CHECKPOINT_EVERY: config.yaml's value
DEMO = ModelSpec("deit_tiny", img_size=16, patch_size=4)
AUGMENT = AugmentConfig(scale=(0.9, 1.1), translate=0.1)


def splits(num_train: int, side: int) -> tuple[Split, Split]:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (num_train, side, side, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, num_train))
    return Split(images, labels), Split(images[:BATCH], labels[:BATCH])


def new_model():
    torch.manual_seed(0)
    model = create_model(DEMO, num_classes=10)
    return model, BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, AUGMENT)


def bare_loop(train: Split, val: Split) -> float:
    """Seconds for EPOCHS epochs of the plain loop."""
    model, preprocess = new_model()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = len(train) // BATCH
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS * steps)
    started = time.process_time()
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for step in range(steps):
            index = order[step * BATCH : (step + 1) * BATCH]
            x = preprocess(train.images[index], train=True, generator=generator)
            loss = F.cross_entropy(model(x), train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss.item()  # the trainer reads every loss too (running mean, NaN check)
        model.eval()
        with torch.no_grad():
            model(preprocess(val.images, train=False)).argmax(1)
    return time.process_time() - started


def trainer(train: Split, val: Split, every: int) -> float:
    """Seconds for EPOCHS epochs of ``fit`` (full fine-tuning), saving a resume state every ``every``."""
    model, preprocess = new_model()
    method = prepare_model(model, method_config("full"), MethodContext(0, torch.device("cpu")))
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, eval_batch_size=BATCH, warmup_epochs=0.5)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        resume = ResumeFile(Path(tmp) / "resume.pt", every, "benchmark") if every else None
        started = time.process_time()
        fit(method, train, val, preprocess, cfg, 1e-3, 0.05, seed=0, resume=resume)
        return time.process_time() - started


def speed(args) -> None:
    train, val = splits(args.steps * BATCH, 8)
    images = EPOCHS * len(train)
    times = {"bare": [], "trainer": [], "trainer_states": []}
    for _ in range(args.rounds):
        times["bare"].append(bare_loop(train, val))
        times["trainer"].append(trainer(train, val, every=0))
        times["trainer_states"].append(trainer(train, val, every=args.every))
    best = {name: min(t) for name, t in times.items()}
    rate = {name: images / t for name, t in best.items()}
    saves = EPOCHS * args.steps // args.every
    step_s = best["trainer"] / (EPOCHS * args.steps)
    save_s = (best["trainer_states"] - best["trainer"]) / saves
    print(
        f"speed: {torch.get_num_threads()} thread(s), full fine-tuning of 12-block DeiT-tiny at 16 px, "
        f"batch {BATCH}, {EPOCHS} epochs x {args.steps} steps, best of {args.rounds} alternating rounds, CPU time"
    )
    print(f"  bare loop                      {rate['bare']:8.1f} img/s")
    print(
        f"  trainer, no resume state       {rate['trainer']:8.1f} img/s   ratio {rate['trainer'] / rate['bare']:.3f}"
    )
    print(
        f"  trainer, state every {args.every:3d} steps {rate['trainer_states']:8.1f} img/s   "
        f"ratio {rate['trainer_states'] / rate['bare']:.3f}"
    )
    share = save_s / (CHECKPOINT_EVERY * step_s)
    print(
        f"  one resume state: {1000 * save_s:.1f} ms against {1000 * step_s:.1f} ms per step; every "
        f"{CHECKPOINT_EVERY} steps (config.yaml) that is {100 * share:.2f}% of training time, "
        f"ratio {rate['trainer'] / (1 + share) / rate['bare']:.3f}"
    )


def memory_child(method: str, model_name: str, threads: int) -> None:
    """Two training steps of ``method`` at 224 px; prints their peak memory as JSON."""
    torch.set_num_threads(threads)
    train, val = splits(2 * 16, 32)
    memory = PhasePeaks(torch.device("cpu"))
    before = memory.process_peak_mb()
    torch.manual_seed(0)
    model = create_model(ModelSpec(model_name), num_classes=10)
    context = MethodContext(total_steps=2, device=torch.device("cpu"))
    prepared = prepare_model(model, method_config(method), context)
    cfg = TrainConfig(epochs=1, batch_size=16, eval_batch_size=16)
    preprocess = BatchPreprocessor(224, (0.5,) * 3, (0.5,) * 3)
    val = Split(val.images[:16], val.labels[:16])
    with contextlib.redirect_stderr(io.StringIO()):
        fit(prepared, train, val, preprocess, cfg, 1e-3, 0.0, seed=0, memory=memory)
    print(json.dumps({"before_mb": before, "peak_mb": memory.peaks["train"]}))


def memory(args) -> None:
    peaks = {}
    for method in ("full", "lora_r8", "qlora4_r8", "qalora4_r8"):
        cmd = [sys.executable, __file__, "--memory-child", method, "--memory-model", args.memory_model]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[method] = json.loads(out.strip().splitlines()[-1])
    print(
        f"memory: peak RSS while training, 2 steps of {args.memory_model} at 224 px, batch 16, a process each"
    )
    for method, mem in peaks.items():
        growth = mem["peak_mb"] - mem["before_mb"]
        print(
            f"  {method:10s} peak {mem['peak_mb']:7.0f} MB   above the process before the model {growth:7.0f} MB"
        )
    for a, b in (("lora_r8", "full"), ("qlora4_r8", "lora_r8"), ("qalora4_r8", "lora_r8")):
        pa, pb = peaks[a], peaks[b]
        ratio = pa["peak_mb"] / pb["peak_mb"]
        growth = (pa["peak_mb"] - pa["before_mb"]) / (pb["peak_mb"] - pb["before_mb"])
        print(f"  {a} / {b}: peak {ratio:.3f}, above the process before the model {growth:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    parser.add_argument("--every", type=int, default=1, help="steps between resume states")
    parser.add_argument("--memory-model", default="deit_tiny", help="model of the memory comparison")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_model, args.threads)
        return
    torch.set_num_threads(args.threads)
    speed(args)
    memory(args)


if __name__ == "__main__":
    main()
