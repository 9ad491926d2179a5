"""Whether a run has converged: a plateau test on its validation top-1 curve.

A run has converged when it ran at least ``window + 1`` epochs and its final validation top-1 is
at most ``tolerance`` points above the validation top-1 ``window`` epochs earlier: the last
``window`` epochs gained at most ``tolerance`` points. A run whose accuracy fell over the window
counts as converged too (it is not climbing any more). Every training run records the verdict in
its ``metrics.json``; the checklist fails on a run that has not converged (unless the study is
partial).

This module imports neither torch nor timm: the config check at workflow load uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConvergenceCriterion:
    """The config's ``convergence:`` section.

    Attributes:
        window: epochs over which the validation top-1 must have stopped climbing.
        tolerance: the most it may have gained over them, in points of top-1 (percent).
    """

    window: int = 3
    tolerance: float = 1.0

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"convergence.window: must be an integer >= 1 (epochs), got {self.window!r}")
        if (
            isinstance(self.tolerance, bool)
            or not isinstance(self.tolerance, int | float)
            or not self.tolerance > 0
        ):
            raise ValueError(
                f"convergence.tolerance: must be a number > 0 (points of top-1), got {self.tolerance!r}"
            )

    def gain(self, val_top1: Sequence[float]) -> float | None:
        """Validation top-1 gained over the last ``window`` epochs; None if the curve is shorter."""
        if len(val_top1) < self.window + 1:
            return None
        return float(val_top1[-1]) - float(val_top1[-1 - self.window])

    def judge(self, val_top1: Sequence[float]) -> dict[str, Any]:
        """The verdict on one validation curve, as the flat fields a run's ``metrics.json`` records."""
        gain = self.gain(val_top1)
        return {
            "converged": gain is not None and gain <= self.tolerance,
            "val_top1_gain_last_window": gain,
            "convergence_window": self.window,
            "convergence_tolerance": float(self.tolerance),
        }
