"""Gradient stability of training, recorded per epoch: the global gradient norm, how often it was
clipped, and how many step losses spiked.

Per optimizer step the meter only queues a few scalar operations on the device the training runs
on; nothing is read back until the epoch ends, so a GPU never waits on it mid-epoch (one
``.tolist()`` per epoch). Its sums and its window of recent losses are part of the resume state,
so a resumed run records the same numbers as one that was never interrupted.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# A step's loss spikes when it is non-finite, or above SPIKE_FACTOR times the median of the
# SPIKE_WINDOW step losses before it and above that median by at least SPIKE_MIN_RISE times the
# chance-level loss ln(classes). torch.nanmedian: the lower of the two middle values, NaNs left
# out, so that one NaN loss does not make every later loss a spike. Steps are judged once the
# window is full, so the first SPIKE_WINDOW steps of a run are never spikes. The ratio alone is
# not enough: late in training the loss is a few hundredths, and a batch with one confident
# mistake triples it without anything having gone wrong (on the demo, 5 to 9 of an epoch's 17
# steps were "spikes" by the ratio alone, rising as the loss fell).
SPIKE_FACTOR = 3.0
SPIKE_MIN_RISE = 0.1
SPIKE_WINDOW = 16

# The order of the per-epoch sums in StabilityMeter.sums.
NORM_SUM, NORM_MAX, CLIPPED, SPIKES, SKIPPED = range(5)


class StabilityMeter:
    """Per-epoch gradient-norm and loss-spike statistics, accumulated on the training device.

    Args:
        device: where the losses and gradient norms live.
        grad_clip: the clipping threshold of the global norm; 0 means no clipping (none counted).
        num_classes: the classes of the task, whose chance-level loss ln(num_classes) scales the
            rise a spike needs (``SPIKE_MIN_RISE``).
    """

    def __init__(self, device: torch.device, grad_clip: float, num_classes: int):
        self.clip_at = grad_clip if grad_clip > 0 else float("inf")
        self.min_rise = SPIKE_MIN_RISE * math.log(num_classes)
        self.window = torch.zeros(SPIKE_WINDOW, device=device)  # the last step losses, a ring
        self.losses_seen = 0  # step losses recorded in the run so far
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # this epoch's, see NORM_SUM
        self.steps = 0  # optimizer steps recorded in this epoch
        self.is_max = torch.arange(5, device=device) == NORM_MAX  # the one sum that is a maximum
        # made on the device once: a Python bool made into a tensor there each step would wait
        self.skipped_flags = {flag: torch.tensor(flag, device=device) for flag in (False, True)}

    def record(
        self, loss: torch.Tensor, grad_norm: torch.Tensor, skipped: torch.Tensor | bool = False
    ) -> None:
        """One optimizer step: its mean training ``loss`` and its global gradient norm before
        clipping (what ``clip_grad_norm_`` returns), both 0-d tensors; no host sync.

        ``skipped``: the fp16 gradient scaler skipped the step (its scaled gradients overflowed, so
        its norm is not finite). It is counted, and left out of the norm statistics and clipping."""
        loss = loss.detach().float()
        skipped = self.skipped_flags[skipped] if isinstance(skipped, bool) else skipped
        norm = torch.where(skipped, 0.0, grad_norm.detach().to(torch.float64))
        if self.losses_seen >= SPIKE_WINDOW:
            median = self.window.nanmedian()
            limit = torch.maximum(SPIKE_FACTOR * median, median + self.min_rise)
            spike = ~(loss <= limit)  # not (loss <= limit): a NaN loss counts as a spike too
        else:
            spike = torch.zeros((), dtype=torch.bool, device=loss.device)
        self.window[self.losses_seen % SPIKE_WINDOW] = loss
        self.losses_seen += 1
        step = torch.stack([norm, norm, (norm > self.clip_at).double(), spike.double(), skipped.double()])
        self.sums = torch.where(self.is_max, torch.maximum(self.sums, step), self.sums + step)
        self.steps += 1

    def epoch_summary(self) -> dict[str, float | int]:
        """This epoch's statistics (one host sync), and a fresh start for the next epoch.

        Returns:
            grad_norm_mean, grad_norm_max: the global L2 norm of the full batch's gradient before
                clipping, mean and maximum over the epoch's optimizer steps;
            clipped_fraction: the fraction of those steps whose norm exceeded the clipping
                threshold (so that clipping scaled the gradient down);
            loss_spikes: the steps whose loss spiked (see ``SPIKE_FACTOR``);
            skipped_steps: the steps the fp16 gradient scaler skipped (not in the statistics above).
        """
        norm_sum, norm_max, clipped, spikes, skipped = self.sums.tolist()
        steps = max(self.steps - int(skipped), 1)  # the steps the optimizer took
        summary = {
            "grad_norm_mean": norm_sum / steps,
            "grad_norm_max": norm_max,
            "clipped_fraction": clipped / steps,
            "loss_spikes": int(spikes),
            "skipped_steps": int(skipped),
        }
        self.sums = torch.zeros_like(self.sums)
        self.steps = 0
        return summary

    def state(self) -> dict[str, Any]:
        """What a resume needs, mid-epoch included."""
        return {
            "window": self.window.clone(),
            "losses_seen": self.losses_seen,
            "sums": self.sums.clone(),
            "steps": self.steps,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.window = state["window"].to(self.window.device)
        self.losses_seen = state["losses_seen"]
        self.sums = state["sums"].to(self.sums.device)
        self.steps = state["steps"]
