"""The supplement's per-epoch figures: every run's own training curve, where the paper's
convergence figure shows only the mean and range over seeds of one dataset x model; and the rank
of every layer that AdaLoRA adapted, epoch by epoch, where the paper shows only the final ranks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from vitpeft.analysis.figures import block_module, run_curves
from vitpeft.analysis.style import (
    apply_style,
    method_colour,
    method_family,
    method_label,
    method_sort_key,
    placeholder,
    plt,
    save,
)

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


def rank_epochs(records: list[dict]) -> pd.DataFrame:
    """One AdaLoRA run's ranks: one row per epoch (from 1), one column per (block, module)."""
    frame = pd.DataFrame([record["adalora_ranks"] for record in records], dtype=float)
    frame.columns = pd.MultiIndex.from_tuples([block_module(name) for name in frame.columns])
    frame.index = range(1, len(frame) + 1)
    return frame


def adalora_rank_epochs(runs: pd.DataFrame, curves: dict[str, dict], out_pdf: str | Path | None):
    """The rank of every layer AdaLoRA adapted after each epoch, mean over seeds: one row of
    panels per AdaLoRA method x dataset x model, one panel per module, one line per block
    (shallow blocks dark, deep blocks bright); the dashed line is the average rank over all
    layers, which pruning brings down to the method's target."""
    adalora = runs[runs.method.map(method_family) == "adalora"]
    if adalora.empty:
        return placeholder("No AdaLoRA run in this study.", out_pdf)
    apply_style()
    groups = list(adalora.groupby(["dataset", "model", "method"], sort=True))
    means = [
        pd.concat([rank_epochs(curves[d]["records"]) for d in group.run_dir]).groupby(level=0).mean()
        for _, group in groups
    ]
    modules = sorted({module for mean in means for _, module in mean.columns})
    fig, axes = plt.subplots(
        len(groups), len(modules), figsize=(2.3 * len(modules), 2.2 * len(groups)), squeeze=False, sharey=True
    )
    for row_axes, ((dataset, model, method), group), mean in zip(axes, groups, means, strict=True):
        blocks = sorted({block for block, _ in mean.columns})
        shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(blocks)))
        for ax, module in zip(row_axes, modules, strict=True):
            for block, shade in zip(blocks, shades, strict=True):
                if (block, module) in mean.columns:
                    ax.plot(mean.index, mean[(block, module)], color=shade, lw=1.0, label=f"block {block}")
            ax.plot(mean.index, mean.mean(axis=1), color="0.2", linestyle="--", lw=1.0, label="all layers")
            ax.set_title(f"{module}", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
        row_axes[0].set_ylabel(f"{method_label(method)}\n{model} on {dataset}\nrank ({len(group)} seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=6, frameon=False)
    fig.tight_layout(rect=(0, 0.08 / len(groups), 1, 1))
    return save(fig, out_pdf)


def make_seed_curves(
    runs_csv: str | Path,
    metrics_paths: list[str | Path],
    out: dict[str, str | Path],
    out_adalora_epochs: str | Path | None = None,
) -> None:
    """The per-seed figure of every curve in ``out`` (curve name -> PDF) from the runs' metrics,
    and AdaLoRA's ranks over the epochs (``out_adalora_epochs``)."""
    runs = pd.read_csv(runs_csv)
    curves = run_curves(runs, metrics_paths)
    for curve, out_pdf in out.items():
        seed_curves(runs, curves, curve, out_pdf)
    if out_adalora_epochs is not None:
        adalora_rank_epochs(runs, curves, out_adalora_epochs)
