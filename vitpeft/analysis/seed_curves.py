"""The supplement's per-seed training curves: every run's own curve, where the paper's convergence
figure shows only the mean and range over seeds of one dataset x model."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from vitpeft.analysis.figures import run_curves
from vitpeft.analysis.style import apply_style, method_colour, method_label, method_sort_key, plt, save

# The curves drawn, one PDF each: metrics.json's curve name -> axis label.
SEED_CURVES = {"val_top1": "validation top-1 (%)", "train_loss": "training loss"}
PANELS_PER_ROW = 3
SEED_STYLES = ["-", "--", ":", "-."]


def seed_curves(runs: pd.DataFrame, curves: dict[str, dict], curve: str, out_pdf: str | Path | None):
    """One panel per dataset x model x method, one line per seed: curve ``curve`` over the epochs.

    Args:
        runs: the run table (``runs.csv``): dataset, model, method, seed and run_dir per run.
        curves: the per-epoch curves of every run, keyed by run_dir (:func:`run_curves`).
        curve: a key of :data:`SEED_CURVES`.
        out_pdf: where to write the figure; None returns it.
    """
    apply_style()
    groups = sorted(
        runs.groupby(["dataset", "model", "method"]),
        key=lambda item: (item[0][0], item[0][1], method_sort_key(item[0][2])),
    )
    several_cells = runs[["dataset", "model"]].drop_duplicates().shape[0] > 1
    columns = min(PANELS_PER_ROW, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.4 * columns, 1.9 * rows), squeeze=False, sharey=curve == "val_top1"
    )
    for ax, ((dataset, model, method), group) in zip(axes.flat, groups, strict=False):
        for i, run in enumerate(group.sort_values("seed").itertuples()):
            values = curves[run.run_dir][curve]
            ax.plot(
                range(1, len(values) + 1),
                values,
                color=method_colour(method),
                linestyle=SEED_STYLES[i % len(SEED_STYLES)],
                label=f"seed {run.seed}",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(method_label(method) + (f"\n{model} on {dataset}" if several_cells else ""), fontsize=8)
        ax.legend(fontsize=6, frameon=False)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel(SEED_CURVES[curve])
    if not several_cells:
        first = runs.iloc[0]
        fig.suptitle(f"{first.model} on {first.dataset}", fontsize=9)
    fig.tight_layout()
    return save(fig, out_pdf)


def make_seed_curves(
    runs_csv: str | Path, metrics_paths: list[str | Path], out: dict[str, str | Path]
) -> None:
    """The per-seed figure of every curve in ``out`` (curve name -> PDF) from the runs' metrics."""
    runs = pd.read_csv(runs_csv)
    curves = run_curves(runs, metrics_paths)
    for curve, out_pdf in out.items():
        seed_curves(runs, curves, curve, out_pdf)
