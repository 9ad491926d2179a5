"""Whether a run has converged: a plateau test on its validation top-1 curve.

A run has converged when it ran at least ``2 * window`` epochs and the mean validation top-1 of
its last ``window`` epochs is at most ``tolerance`` points above the mean of the ``window`` epochs
before them. A run whose accuracy fell counts as converged too (it is not climbing any more).
Means of windows, not two single epochs: on a small validation split one image is a third of a
point, and an epoch or two of a few flipped images made a flat curve look as if it still rose
(on the demo, a run at 98.5, 97.4, 98.1, 98.5, 98.5 over its last five epochs "gained" 1.1 points
from its 17th epoch to its 20th). A steady rise of r points per epoch gains r * window either way. Every training run records the verdict in
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
        window: epochs per window; the last window's mean validation top-1 is compared with the
            mean of the window before it.
        tolerance: the most the last window's mean may exceed the one before, in points of top-1
            (percent).
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
        """Mean validation top-1 of the last ``window`` epochs minus the mean of the ``window``
        epochs before them; None if the curve is shorter than ``2 * window`` epochs."""
        if len(val_top1) < 2 * self.window:
            return None
        last = [float(v) for v in val_top1[-self.window :]]
        before = [float(v) for v in val_top1[-2 * self.window : -self.window]]
        return sum(last) / self.window - sum(before) / self.window

    def judge(self, val_top1: Sequence[float]) -> dict[str, Any]:
        """The verdict on one validation curve, as the flat fields a run's ``metrics.json`` records."""
        gain = self.gain(val_top1)
        return {
            "converged": gain is not None and gain <= self.tolerance,
            "val_top1_gain_last_window": gain,
            "convergence_window": self.window,
            "convergence_tolerance": float(self.tolerance),
        }
