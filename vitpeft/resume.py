"""The resume state of a training: what a killed job needs to go on exactly where it stopped.

The trainer saves it every ``every`` optimizer steps into one file beside the run's outputs
(``{run_dir}/resume.pt``). It is not an output of any rule, so Snakemake neither waits for it nor
deletes it when a job dies; the run removes it once its outputs are written. Rerunning a killed
job (``snakemake --rerun-incomplete``, or a SLURM requeue, which simply reruns it) finds the file
and continues from it. On CPU the resumed run ends with the same weights and metrics, bit for bit,
as one that was never interrupted: the state holds the trainable weights, the optimizer and the
schedule, every random number generator, the position in the shuffled data and the curves so far.

A state carries the key of what the run depends on (config, data, backbone). A state with another
key belongs to a different run (the config changed since the job died; Snakemake reruns such a job
from scratch): it is ignored with a warning and overwritten at the first save, rather than failing
a job that would otherwise run correctly. An unreadable state is ignored the same way.
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitpeft.io import atomic_path


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state training draws from: the data ``generator`` (shuffling, augmentation),
    torch's global CPU and CUDA generators (dropout, MixUp, erasing noise), numpy and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    random.setstate(state["python"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes: trainable parameters and buffers. Frozen weights are not
    saved; the rerun rebuilds them from the same backbone and config."""
    state = {f"param.{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state |= {f"buffer.{n}": b.detach().clone() for n, b in model.named_buffers()}
    return state


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` into ``model`` in place; every saved tensor must find its
    place, and every trainable parameter must be covered."""
    targets = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    expected = set(targets)
    targets |= {f"buffer.{n}": b for n, b in model.named_buffers()}
    if set(state) - set(targets) or expected - set(state):
        raise ValueError(
            f"resume state does not fit the model: unknown {sorted(set(state) - set(targets))[:5]}, "
            f"missing {sorted(expected - set(state))[:5]}"
        )
    for name, tensor in state.items():
        targets[name].copy_(tensor)


@dataclass
class ResumeFile:
    """Where a run keeps its resume state, how often it is saved, and whose it is.

    Attributes:
        path: the state file, in the run's folder but not a rule output.
        every: optimizer steps between two saves; 0 saves none (and loads none).
        key: a hash of everything the run depends on; a state saved under another key is ignored.
        time_before_s: training seconds the loaded state had cost (0 without one); the trainer
            adds them to its own, so a run's training time spans its interrupted attempts.
        save_last_step: also save after the last optimizer step (given as ``last_step``), so that
            the state holds the finished training (a job of several runs keeps it until all are done).
    """

    path: Path
    every: int
    key: str
    time_before_s: float = field(default=0.0, init=False)
    save_last_step: bool = False

    def due(self, global_step: int, last_step: int | None = None) -> bool:
        if self.every <= 0:
            return False
        return global_step % self.every == 0 or (self.save_last_step and global_step == last_step)

    def save(self, state: dict[str, Any], train_time_s: float) -> None:
        """Write atomically: a kill during the write leaves the previous state in place."""
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, "train_time_s": train_time_s, **state}, tmp)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it cannot be read, or it is another run's."""
        if self.every == 0 or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 -- any unreadable file: start afresh, say so
            print(f"warning: ignoring unreadable resume state {self.path}: {err}", file=sys.stderr)
            return None
        if state.get("key") != self.key:
            print(
                f"warning: ignoring resume state {self.path}: written for key {state.get('key')}, "
                f"this run's key is {self.key} (config, data or backbone changed); starting afresh",
                file=sys.stderr,
            )
            return None
        self.time_before_s = state["train_time_s"]
        return state

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
