"""Figures of the paper, as vector PDFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vitpeft.analysis.style import (
    FAMILY_MARKERS,
    apply_style,
    method_colour,
    method_family,
    method_label,
    method_sort_key,
    plt,
)
from vitpeft.io import atomic_path, read_json


def save(fig, out_pdf: str | Path) -> None:
    """Write a figure as a vector PDF, atomically, and free it."""
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)


def accuracy_vs_params(cell_stats: pd.DataFrame, out_pdf: str | Path) -> None:
    """Test top-1 (mean and 95% CI over seeds) against trainable parameters, one panel per dataset x model."""
    apply_style()
    panels = list(cell_stats.groupby(["dataset", "model"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, ((dataset, model), group) in zip(axes[0], panels, strict=True):
        for _, row in sorted(group.iterrows(), key=lambda item: method_sort_key(item[1]["method"])):
            half = row["test_top1_ci_high"] - row["test_top1_mean"]
            ax.errorbar(
                row["trainable_params"],
                row["test_top1_mean"],
                yerr=None if np.isnan(half) else [[half], [half]],
                fmt=FAMILY_MARKERS.get(method_family(row["method"]), "o"),
                color=method_colour(row["method"]),
                capsize=3,
                markersize=6,
                label=method_label(row["method"]),
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{model} on {dataset}")
        ax.legend(fontsize=7, frameon=False)
    save(fig, out_pdf)


def convergence(runs: pd.DataFrame, curves: dict[str, dict], out_pdf: str | Path) -> None:
    """Validation top-1 per epoch, mean over seeds with a min-max band, per method (first dataset x model)."""
    apply_style()
    fig, ax = plt.subplots()
    first = runs.iloc[0]
    subset = runs[(runs.dataset == first.dataset) & (runs.model == first.model)]
    for method in sorted(subset.method.unique(), key=method_sort_key):
        stacked = np.array([curves[d]["val_top1"] for d in subset[subset.method == method].run_dir])
        epochs = np.arange(1, stacked.shape[1] + 1)
        ax.plot(epochs, stacked.mean(0), color=method_colour(method), label=method_label(method))
        ax.fill_between(epochs, stacked.min(0), stacked.max(0), color=method_colour(method), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{first.model} on {first.dataset}")
    ax.legend(fontsize=7, frameon=False)
    save(fig, out_pdf)


def make_figures(
    runs_csv: str | Path, cell_stats_csv: str | Path, out_params: str | Path, out_convergence: str | Path
) -> None:
    """Every figure of the paper from the aggregated tables (curves come from each run's metrics)."""
    runs = pd.read_csv(runs_csv)
    accuracy_vs_params(pd.read_csv(cell_stats_csv), out_params)
    curves = {d: read_json(Path(d) / "metrics.json")["curves"] for d in runs.run_dir}
    convergence(runs, curves, out_convergence)
