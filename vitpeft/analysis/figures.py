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
from matplotlib.ticker import MaxNLocator

from vitpeft.analysis.aggregate import baselines_table
from vitpeft.analysis.gradients import stability_figure, write_stability_sentence
from vitpeft.analysis.style import (
    FAMILY_LABELS,
    FAMILY_MARKERS,
    apply_style,
    method_colour,
    method_family,
    method_label,
    method_sort_key,
    placeholder,
    plt,
    save,
)
from vitpeft.baselines import BASELINE_NAMES
from vitpeft.io import read_json
from vitpeft.methods import parse_method_name

FRONTIER_COLOUR = "#7f7f7f"
SIGNIFICANCE = 0.05  # Holm-corrected p below which the rank-ablation figure marks a rank
# The classical baselines: grey reference lines, one dash pattern each.
BASELINE_COLOUR = "#595959"
BASELINE_DASHES = {"logreg": ":", "svc": "--", "knn": "-."}
# The memory axis of Figure 1, read from this one column of the cell statistics.
MEMORY_COLUMN, MEMORY_LABEL = "train_peak_mem_mb", "peak memory while training (MiB)"


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


def varying_fields(methods) -> dict[str, set[str]]:
    """Per family, the name fields (``bits``, ``r``) that take more than one value among ``methods``:
    what a point's label must say, since a family has one colour, one marker and one legend entry."""
    seen: dict[str, dict[str, set]] = {}
    for method in methods:
        family, fields = parse_method_name(method)
        for key, value in fields.items():
            seen.setdefault(family, {}).setdefault(key, set()).add(value)
    return {family: {k for k, v in fields.items() if len(v) > 1} for family, fields in seen.items()}


def variant_label(method: str, varying: set[str]) -> str:
    """What tells ``method`` from the rest of its family: ``"r=8"``, ``"4-bit"``, ``"4-bit r=8"``."""
    fields = parse_method_name(method)[1]
    parts = [f"{fields['bits']}-bit"] if "bits" in varying else []
    return " ".join(parts + ([f"r={fields['r']}"] if "r" in varying else []))


def separate_labels(fig, texts, pad_px: float = 1.0) -> None:
    """Shift annotations up (in their offset points) until no two overlap on the canvas.

    From the lowest up, each label is lifted just clear of every label already placed that it
    overlaps; labels keep their vertical order, and each moves no further than it must.
    """
    fig.draw_without_rendering()  # settle the axis limits the labels are placed by
    renderer = fig.canvas.get_renderer()
    points_per_px = 72.0 / fig.dpi
    boxes = [text.get_window_extent(renderer) for text in texts]
    placed = []
    for i in sorted(range(len(texts)), key=lambda i: (boxes[i].y0, boxes[i].x0)):
        box = boxes[i]
        while (hit := next((p for p in placed if box.overlaps(p)), None)) is not None:
            lift = hit.y1 - box.y0 + pad_px
            box = box.translated(0, lift)
            x, y = texts[i].xyann
            texts[i].xyann = (x, y + lift * points_per_px)
        placed.append(box)


def flip_labels_near_the_right_edge(fig, labels, edge: float = 0.8) -> None:
    """Put the labels of points in the right part of their axes on the points' left, so that they
    stay inside the axes, clear of the reference labels right of it."""
    fig.draw_without_rendering()
    for label in labels:
        ax = label.axes
        x_fraction = ax.transAxes.inverted().transform(ax.transData.transform(label.xy))[0]
        if x_fraction > edge:
            label.set_horizontalalignment("right")
            label.xyann = (-label.xyann[0], label.xyann[1])


def make_room_right(fig, labels, axis_labels_in: float = 0.75) -> None:
    """Widen the gaps between side-by-side panels so that ``labels`` right of one panel clear the
    next panel's tick and axis labels (about ``axis_labels_in`` inches)."""
    if not labels or len(fig.axes) < 2:
        return
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    widest = max(label.get_window_extent(renderer).width for label in labels) / fig.dpi
    panel = fig.axes[0].get_position().width * fig.get_figwidth()
    fig.subplots_adjust(wspace=(widest + axis_labels_in) / panel)


def baseline_lines(ax, baselines: pd.DataFrame | None, dataset: str) -> list:
    """The classical baselines fit on ``dataset`` as grey horizontal lines across ``ax``, each
    labelled just right of the axes; returns the labels."""
    if baselines is None or baselines.empty:
        return []
    labels = []
    on_dataset = baselines[baselines.dataset == dataset]
    for b in sorted(on_dataset.to_dict("records"), key=lambda b: BASELINE_NAMES.index(b["baseline"])):
        ax.axhline(
            b["test_top1"],
            color=BASELINE_COLOUR,
            linestyle=BASELINE_DASHES[b["baseline"]],
            linewidth=1,
            zorder=0,
        )
        labels.append(
            ax.annotate(
                f"{b['label']} {b['test_top1']:.1f}",
                (1.0, b["test_top1"]),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=BASELINE_COLOUR,
                annotation_clip=False,
            )
        )
    return labels


def accuracy_vs_cost(
    cell_stats: pd.DataFrame,
    cost: str,
    xlabel: str,
    out_pdf: str | Path | None,
    log: bool,
    baselines: pd.DataFrame | None = None,
):
    """Test top-1 (mean and 95% CI over seeds) against a cost column, one panel per dataset x model,
    with the Pareto frontier (the best accuracy reachable at each cost) and the classical
    ``baselines`` (``aggregate.baselines_table``) as labelled reference lines.

    One legend entry per method family, under the panels. A family's points are told apart by a
    label at each marker (its rank, its bits) where the family varies, and its ranks are joined by
    a line. No two labels overlap.
    """
    apply_style()
    fig, axes = panels(cell_stats, width=5.2 if baselines is not None and len(baselines) else 4.5)
    handles: dict[str, object] = {}
    labels = []
    for ax, ((dataset, model), group) in axes:
        varying = varying_fields(group.method)
        rows = sorted_rows(group)
        for family in dict.fromkeys(method_family(r["method"]) for r in rows):
            members = [r for r in rows if method_family(r["method"]) == family]
            colour, marker = method_colour(members[0]["method"]), FAMILY_MARKERS.get(family, "o")
            if "r" in varying.get(family, set()):
                for bits in dict.fromkeys(parse_method_name(r["method"])[1].get("bits") for r in members):
                    ranks = [r for r in members if parse_method_name(r["method"])[1].get("bits") == bits]
                    ax.plot(
                        [r[cost] for r in ranks], [r["test_top1_mean"] for r in ranks], color=colour, lw=1
                    )
            for row in members:
                drawn = ax.errorbar(
                    row[cost],
                    row["test_top1_mean"],
                    yerr=ci_bar(row),
                    fmt=marker,
                    color=colour,
                    capsize=3,
                    markersize=6,
                )
                handles.setdefault(FAMILY_LABELS.get(family, family), drawn)
                text = variant_label(row["method"], varying.get(family, set()))
                if text:
                    labels.append(
                        ax.annotate(
                            text,
                            (row[cost], row["test_top1_mean"]),
                            xytext=(5, -3),
                            textcoords="offset points",
                            fontsize=7,
                            color=colour,
                            va="top",
                        )
                    )
        # The frontier is over ways of adapting the pretrained backbone; the from-scratch baseline
        # is shown for reference but is not one of them.
        adapting = group[group.method.map(method_family) != "scratch"]
        front = adapting.iloc[pareto_front(adapting[cost], adapting["test_top1_mean"])]
        handles["Pareto frontier"] = ax.step(
            front[cost],
            front["test_top1_mean"],
            where="post",
            color=FRONTIER_COLOUR,
            linestyle="--",
            linewidth=1,
            zorder=0,
        )[0]
        labels += baseline_lines(ax, baselines, dataset)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{model} on {dataset}")
    references = [label for label in labels if label.xycoords[0] == "axes fraction"]
    flip_labels_near_the_right_edge(fig, [label for label in labels if label not in references])
    make_room_right(fig, references)
    separate_labels(fig, labels)
    renderer = fig.canvas.get_renderer()
    under_labels = min(ax.xaxis.label.get_window_extent(renderer).y0 for ax in fig.axes) / fig.bbox.height
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="upper center",
        bbox_to_anchor=(0.5, under_labels - 0.01),  # under the panels' axis labels, off the data
        ncol=min(4, len(handles)),
        fontsize=7,
        frameon=False,
    )
    return save(fig, out_pdf)


def accuracy_vs_params(
    cell_stats: pd.DataFrame, out_pdf: str | Path | None, baselines: pd.DataFrame | None = None
):
    return accuracy_vs_cost(cell_stats, "trainable_params", "trainable parameters", out_pdf, True, baselines)


def accuracy_vs_memory(
    cell_stats: pd.DataFrame, out_pdf: str | Path | None, baselines: pd.DataFrame | None = None
):
    return accuracy_vs_cost(cell_stats, MEMORY_COLUMN, MEMORY_LABEL, out_pdf, False, baselines)


def convergence(runs: pd.DataFrame, curves: dict[str, dict], out_pdf: str | Path | None) -> None:
    """Validation top-1 per epoch, mean over seeds with a min-max band, per method (first dataset x
    model), on integer epochs. The two windows the runs were judged over (their last
    ``2 * convergence_window`` epochs, :mod:`vitpeft.convergence`) are shaded, and a cross marks the last epoch of every run that
    has not converged (or records no verdict). The legend sits right of the axes, off the data."""
    apply_style()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    first = runs.iloc[0]
    subset = runs[(runs.dataset == first.dataset) & (runs.model == first.model)]
    last = 1
    unconverged = False
    for method in sorted(subset.method.unique(), key=method_sort_key):
        group = subset[subset.method == method]
        stacked = np.array([curves[d]["val_top1"] for d in group.run_dir])
        epochs = np.arange(1, stacked.shape[1] + 1)
        last = max(last, len(epochs))
        colour = method_colour(method)
        ax.plot(epochs, stacked.mean(0), color=colour, label=method_label(method), marker=".", markersize=3)
        ax.fill_between(epochs, stacked.min(0), stacked.max(0), color=colour, alpha=0.2)
        verdicts = group["converged"] if "converged" in group else pd.Series(np.nan, index=group.index)
        for curve, verdict in zip(stacked, verdicts, strict=True):
            if pd.isna(verdict) or not bool(verdict):
                ax.plot(epochs[-1], curve[-1], marker="x", color=colour, markersize=7, markeredgewidth=1.5)
                unconverged = True
    windows = subset["convergence_window"].dropna() if "convergence_window" in subset else []
    if len(windows):
        window = int(max(windows))
        # the window before (lighter) and the last window, whose mean top-1 it compares
        ax.axvspan(max(1, last - 2 * window + 0.5), last - window + 0.5, color="0.93", zorder=0)
        ax.axvspan(
            last - window + 0.5,
            last,
            color="0.85",
            zorder=0,
            label=f"convergence windows ({window} epoch{'s' if window > 1 else ''} each)",
        )
    if unconverged:
        ax.plot([], [], "x", color="0.3", markersize=7, markeredgewidth=1.5, label="not converged")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.8, last + 0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{first.model} on {first.dataset}")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, out_pdf)


def final_ranks(records: list[dict]) -> dict[str, int]:
    """The rank of every adapted layer after the last epoch, from an AdaLoRA run's epoch records."""
    return records[-1]["adalora_ranks"]


def block_module(name: str) -> tuple[int, str]:
    """An adapted layer's transformer block index and module name within the block."""
    # timm's blocks.N.attn.qkv; transformers' backbone.layers.N.attention.q_proj
    match = re.fullmatch(r"(?:.*\.)?(?:blocks|layers?)\.(\d+)\.(.+)", name)
    if match is None:
        raise ValueError(f"AdaLoRA layer {name!r} is not inside a transformer block")
    return int(match[1]), match[2]


def rank_grid(ranks: list[dict[str, int]]) -> pd.DataFrame:
    """Mean final rank over seeds as a blocks x modules grid (rows: block index; columns: module)."""
    cells = {}
    for per_seed in ranks:
        for name, rank in per_seed.items():
            cells.setdefault(block_module(name), []).append(rank)
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
    out_stability: str | Path,
    out_stability_sentence: str | Path,
    baselines: list[str | Path] = (),
) -> None:
    """Every figure of the paper from the aggregated tables; the curves come from the runs'
    ``metrics_paths``, one per run of the run table. ``baselines``: the classical baselines'
    records, drawn as reference lines in Figure 1. ``out_stability_sentence``: the gradient-stability
    figure's sentence, a LaTeX macro (:mod:`vitpeft.analysis.gradients`)."""
    runs = pd.read_csv(runs_csv)
    cells = pd.read_csv(cell_stats_csv)
    references = baselines_table(list(baselines))
    accuracy_vs_params(cells, out_params, references)
    accuracy_vs_memory(cells, out_memory, references)
    resource_bars(cells, out_resources)
    rank_ablation(cells, pd.read_csv(comparisons_csv), out_rank)
    curves = run_curves(runs, metrics_paths)
    convergence(runs, curves, out_convergence)
    adalora_ranks(runs, curves, out_adalora)
    stability_figure(runs, curves, out_stability)
    write_stability_sentence(runs, curves, out_stability_sentence)
