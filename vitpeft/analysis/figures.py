"""Figures of the paper, as vector PDFs.

Every figure takes one colour and marker per method family from :mod:`vitpeft.analysis.style`. A
figure whose methods the study lacks is still written, as a panel that says what is missing, so
the paper builds (and says so) for any subset of methods.
"""

from __future__ import annotations

import math
import re
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
from vitpeft.methods import parse_method_name

FRONTIER_COLOUR = "#7f7f7f"
SIGNIFICANCE = 0.05  # Holm-corrected p below which the rank-ablation figure marks a rank


def save(fig, out_pdf: str | Path | None):
    """Write a figure as a vector PDF, atomically, and free it; without a path, return it (notebooks)."""
    if out_pdf is None:
        return fig
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)
    return None


def placeholder(message: str, out_pdf: str | Path) -> None:
    """A small figure that only states ``message``: the study has nothing to plot here."""
    apply_style()
    fig, ax = plt.subplots(figsize=(4.5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    save(fig, out_pdf)


def panels(frame: pd.DataFrame, width: float = 4.5, height: float = 3.2):
    """One subplot per dataset x model, side by side."""
    groups = list(frame.groupby(["dataset", "model"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(width * len(groups), height), squeeze=False)
    return fig, zip(axes[0], groups, strict=True)


def sorted_rows(group: pd.DataFrame) -> list[pd.Series]:
    return [row for _, row in sorted(group.iterrows(), key=lambda item: method_sort_key(item[1]["method"]))]


def pareto_front(cost, accuracy) -> np.ndarray:
    """Indices of the points that no other point beats (no cheaper-or-equal point is more accurate),
    ordered by cost. Points with a NaN cost or accuracy are left out."""
    cost, accuracy = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    valid = np.flatnonzero(~(np.isnan(cost) | np.isnan(accuracy)))
    order = valid[np.lexsort((-accuracy[valid], cost[valid]))]  # by cost, the most accurate first
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.array(front, dtype=int)


def ci_bar(row: pd.Series, metric: str = "test_top1"):
    """The 95% CI as an error bar, or none when a cell has one seed (the interval is undefined)."""
    half = row[f"{metric}_ci_high"] - row[f"{metric}_mean"]
    return None if np.isnan(half) else [[half], [half]]


def families_with_several_ranks(methods) -> set[str]:
    """Families that appear at more than one rank. A family shares a colour and marker, so only
    these need their points labelled with the rank."""
    ranks: dict[str, set[int]] = {}
    for method in methods:
        family, fields = parse_method_name(method)
        if "r" in fields:
            ranks.setdefault(family, set()).add(fields["r"])
    return {family for family, seen in ranks.items() if len(seen) > 1}


def accuracy_vs_cost(cell_stats: pd.DataFrame, cost: str, xlabel: str, out_pdf: str | Path | None, log: bool):
    """Test top-1 (mean and 95% CI over seeds) against a cost column, one panel per dataset x model,
    with the Pareto frontier: the best accuracy reachable at each cost."""
    apply_style()
    fig, axes = panels(cell_stats)
    for ax, ((dataset, model), group) in axes:
        several_ranks = families_with_several_ranks(group.method)
        for row in sorted_rows(group):
            ax.errorbar(
                row[cost],
                row["test_top1_mean"],
                yerr=ci_bar(row),
                fmt=FAMILY_MARKERS.get(method_family(row["method"]), "o"),
                color=method_colour(row["method"]),
                capsize=3,
                markersize=6,
                label=method_label(row["method"]),
            )
            if method_family(row["method"]) in several_ranks:
                rank = parse_method_name(row["method"])[1]["r"]
                ax.annotate(
                    f"r={rank}", (row[cost], row["test_top1_mean"]), xytext=(4, 3), textcoords="offset points"
                )
        # The frontier is over ways of adapting the pretrained backbone; the from-scratch baseline
        # is shown for reference but is not one of them.
        adapting = group[group.method.map(method_family) != "scratch"]
        front = adapting.iloc[pareto_front(adapting[cost], adapting["test_top1_mean"])]
        ax.step(
            front[cost],
            front["test_top1_mean"],
            where="post",
            color=FRONTIER_COLOUR,
            linestyle="--",
            linewidth=1,
            zorder=0,
            label="Pareto frontier",
        )
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{model} on {dataset}")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, out_pdf)


def accuracy_vs_params(cell_stats: pd.DataFrame, out_pdf: str | Path | None):
    return accuracy_vs_cost(cell_stats, "trainable_params", "trainable parameters", out_pdf, log=True)


def accuracy_vs_memory(cell_stats: pd.DataFrame, out_pdf: str | Path | None):
    return accuracy_vs_cost(
        cell_stats, "train_peak_mem_mb", "peak memory while training (MiB)", out_pdf, log=False
    )


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


def final_ranks(records: list[dict]) -> dict[str, int]:
    """The rank of every adapted layer after the last epoch, from an AdaLoRA run's epoch records."""
    return records[-1]["adalora_ranks"]


def rank_grid(ranks: list[dict[str, int]]) -> pd.DataFrame:
    """Mean final rank over seeds as a blocks x modules grid (rows: block index; columns: module)."""
    cells = {}
    for per_seed in ranks:
        for name, rank in per_seed.items():
            match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
            if match is None:
                raise ValueError(f"AdaLoRA layer {name!r} is not inside a transformer block")
            cells.setdefault((int(match[1]), match[2]), []).append(rank)
    grid = pd.Series({key: np.mean(values) for key, values in cells.items()}).unstack()
    return grid.sort_index()


def adalora_ranks(runs: pd.DataFrame, curves: dict[str, dict], out_pdf: str | Path) -> None:
    """Heatmap of the ranks AdaLoRA allocated, blocks x modules, mean over seeds; one panel per
    AdaLoRA method x dataset x model."""
    adalora = runs[runs.method.map(method_family) == "adalora"]
    if adalora.empty:
        placeholder("No AdaLoRA run in this study.", out_pdf)
        return
    apply_style()
    groups = list(adalora.groupby(["dataset", "model", "method"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.4), squeeze=False)
    for ax, ((dataset, model, method), group) in zip(axes[0], groups, strict=True):
        grid = rank_grid([final_ranks(curves[d]["records"]) for d in group.run_dir])
        top = np.nanmax(grid.to_numpy())
        image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto", vmin=0, vmax=top)
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            # viridis runs from dark to bright: light text on the dark half, dark on the bright half
            colour = "white" if value < 0.6 * top else "black"
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel("module")
        ax.set_ylabel("block")
        ax.grid(False)
        ax.set_title(f"{method_label(method)}\n{model} on {dataset} ({len(group)} seed(s))", fontsize=8)
        fig.colorbar(image, ax=ax, label="final rank")
    save(fig, out_pdf)


RESOURCES = [
    ("train_peak_mem_mb", "peak memory while training (MiB)", False),
    ("train_time_s", "training time (s)", False),
    ("trainable_params", "trainable parameters", True),
]


def resource_bars(cell_stats: pd.DataFrame, out_pdf: str | Path) -> None:
    """Peak memory, training time and adapter size per method (mean over seeds), one row of panels
    per dataset x model."""
    apply_style()
    groups = list(cell_stats.groupby(["dataset", "model"], sort=True))
    n_methods = cell_stats.method.nunique()
    fig, axes = plt.subplots(
        len(groups),
        len(RESOURCES),
        figsize=(3.2 * len(RESOURCES), (0.25 * n_methods + 0.9) * len(groups)),
        squeeze=False,
        sharey="row",
    )
    for row_axes, ((dataset, model), group) in zip(axes, groups, strict=True):
        rows = sorted_rows(group)
        labels = [method_label(r["method"]) for r in rows]
        colours = [method_colour(r["method"]) for r in rows]
        for ax, (column, xlabel, log) in zip(row_axes, RESOURCES, strict=True):
            ax.barh(range(len(rows)), [r[column] for r in rows], color=colours)
            ax.set_yticks(range(len(rows)), labels)
            ax.invert_yaxis()  # the table's order, top to bottom
            ax.set_xlabel(xlabel)
            if log:
                ax.set_xscale("log")
        row_axes[0].set_title(f"{model} on {dataset}", loc="left", fontsize=9)
    save(fig, out_pdf)


def rank_ablation(
    cell_stats: pd.DataFrame, comparisons: pd.DataFrame, out_pdf: str | Path, reference: str = "lora_r8"
) -> None:
    """LoRA test top-1 against the rank (mean and 95% CI over seeds), one panel per dataset x model;
    ``*`` marks a rank whose paired difference from ``reference`` survives Holm correction."""
    lora = cell_stats[cell_stats.method.map(method_family) == "lora"]
    if lora.method.nunique() < 2:
        placeholder("Fewer than two LoRA ranks in this study: no rank ablation.", out_pdf)
        return
    apply_style()
    significant = {
        (r.dataset, r.model, r.method)
        for r in comparisons.itertuples()
        if r.baseline == reference and r.p_holm < SIGNIFICANCE
    }
    fig, axes = panels(lora)
    for ax, ((dataset, model), group) in axes:
        for row in sorted_rows(group):
            rank = parse_method_name(row["method"])[1]["r"]
            bar = ci_bar(row)
            ax.errorbar(
                rank, row["test_top1_mean"], yerr=bar, fmt="o", color=method_colour(row["method"]), capsize=3
            )
            if (dataset, model, row["method"]) in significant:
                top = row["test_top1_mean"] + (bar[1][0] if bar else 0)
                ax.annotate("*", (rank, top), xytext=(0, 2), textcoords="offset points", ha="center")
        others = cell_stats[(cell_stats.dataset == dataset) & (cell_stats.model == model)]
        for row in sorted_rows(others[others.method.isin(["full", "linear"])]):
            ax.axhline(
                row["test_top1_mean"],
                color=method_colour(row["method"]),
                linestyle=":",
                linewidth=1,
                label=method_label(row["method"]),
            )
        ranks = sorted(parse_method_name(m)[1]["r"] for m in group.method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{model} on {dataset}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    save(fig, out_pdf)


def run_curves(runs: pd.DataFrame, metrics_paths: list[str | Path]) -> dict[str, dict]:
    """The per-epoch curves of every run in ``runs``, keyed by its ``run_dir``, read from the
    run's ``metrics.json`` among ``metrics_paths`` (the figures rule's declared inputs) only."""
    by_folder = {Path(p).parent: Path(p) for p in metrics_paths}
    missing = [d for d in runs.run_dir if Path(d) not in by_folder]
    if missing:
        raise ValueError(
            f"{len(missing)} run(s) of the run table have no metrics.json among the inputs: {missing}"
        )
    return {d: read_json(by_folder[Path(d)])["curves"] for d in runs.run_dir}


def make_figures(
    runs_csv: str | Path,
    cell_stats_csv: str | Path,
    comparisons_csv: str | Path,
    metrics_paths: list[str | Path],
    *,
    out_params: str | Path,
    out_memory: str | Path,
    out_convergence: str | Path,
    out_adalora: str | Path,
    out_resources: str | Path,
    out_rank: str | Path,
) -> None:
    """Every figure of the paper from the aggregated tables; the curves come from the runs'
    ``metrics_paths``, one per run of the run table."""
    runs = pd.read_csv(runs_csv)
    cells = pd.read_csv(cell_stats_csv)
    accuracy_vs_params(cells, out_params)
    accuracy_vs_memory(cells, out_memory)
    resource_bars(cells, out_resources)
    rank_ablation(cells, pd.read_csv(comparisons_csv), out_rank)
    curves = run_curves(runs, metrics_paths)
    convergence(runs, curves, out_convergence)
    adalora_ranks(runs, curves, out_adalora)
