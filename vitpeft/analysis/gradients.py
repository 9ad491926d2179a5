"""Gradient stability of quantized training: fp32 LoRA against QLoRA (8- and 4-bit) and QA-LoRA at
the same rank, over training, as a figure and as one sentence for the prose.

Both read the per-epoch records of :class:`vitpeft.stability.StabilityMeter` in the runs' curves.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from vitpeft.analysis.style import (
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
from vitpeft.analysis.tables import render
from vitpeft.methods import parse_method_name
from vitpeft.stability import SPIKE_FACTOR, SPIKE_MIN_RISE, SPIKE_WINDOW

QUANTIZED_FAMILIES = ("qlora", "qalora")
COMPARED_FAMILIES = ("lora", *QUANTIZED_FAMILIES)
# One line style per base precision, since QLoRA's two widths share the family's colour.
BITS_DASHES = {None: "-", 8: "--", 4: "-."}
# The panels: curve key, axis label, log scale. The clipped steps' panel is drawn only for runs
# that clipped (:func:`clip_thresholds`).
NORM_PANEL = ("grad_norm_mean", "global gradient norm", True)
CLIP_PANEL = ("clipped_fraction", "steps clipped (%)", False)
SPIKE_PANEL = ("loss_spikes", "loss spikes (all seeds)", False)


def clip_thresholds(runs: pd.DataFrame) -> list[float] | None:
    """The gradient-norm thresholds that ``runs`` clipped at (``grad_clip`` in their metrics), or
    None when none of them clipped. Runs that do not record it (trained before metrics.json held
    it) are taken to have clipped at a threshold not stated (NaN), so their panel stays."""
    if "grad_clip" not in runs:
        return [math.nan]
    thresholds = runs.grad_clip.astype(float)
    clipped = thresholds[thresholds.isna() | (thresholds > 0)]
    if clipped.empty:
        return None
    return sorted(set(clipped.dropna())) + ([math.nan] if clipped.isna().any() else [])


def panels(runs: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """The figure's panels: the clipped steps' only where the runs clipped."""
    return [NORM_PANEL, CLIP_PANEL, SPIKE_PANEL] if clip_thresholds(runs) else [NORM_PANEL, SPIKE_PANEL]


def compared_methods(methods) -> list[str]:
    """LoRA, QLoRA and QA-LoRA at the rank the quantized methods share (the most common one among
    them); none when the study has no quantized method."""
    quantized = [m for m in methods if method_family(m) in QUANTIZED_FAMILIES]
    if not quantized:
        return []
    rank = Counter(parse_method_name(m)[1]["r"] for m in quantized).most_common(1)[0][0]
    chosen = {
        m
        for m in methods
        if method_family(m) in COMPARED_FAMILIES and parse_method_name(m)[1].get("r") == rank
    }
    return sorted(chosen, key=method_sort_key)


def stacked(curves: dict[str, dict], run_dirs, key: str) -> np.ndarray:
    """One row per run, one column per epoch, of the curve ``key``."""
    missing = [d for d in run_dirs if key not in curves[d]]
    if missing:
        raise ValueError(f"{len(missing)} run(s) record no {key!r} curve (trained before it was): {missing}")
    return np.array([curves[d][key] for d in run_dirs], dtype=float)


def stability_figure(runs: pd.DataFrame, curves: dict[str, dict], out_pdf: str | Path | None):
    """Per epoch, one row of panels per dataset x model: the global gradient norm before clipping
    (mean over the epoch's steps: mean over seeds, band from the lowest to the highest seed; thin
    line: the epoch's largest, over all seeds), the percentage of steps clipped (mean over seeds;
    only where the runs clipped) and the loss spikes of all seeds together."""

    methods = compared_methods(runs.method.unique())
    if not methods:
        placeholder("No quantized LoRA run in this study: no gradient-stability comparison.", out_pdf)
        return None
    apply_style()
    compared = runs[runs.method.isin(methods)]
    drawn = panels(compared)
    groups = list(compared.groupby(["dataset", "model"], sort=True))
    fig, axes = plt.subplots(len(groups), len(drawn), figsize=(7.2, 2.4 * len(groups)), squeeze=False)
    for row_axes, ((dataset, model), group) in zip(axes, groups, strict=True):
        panel_axes = {key: ax for ax, (key, _, _) in zip(row_axes, drawn, strict=True)}
        for method in methods:
            run_dirs = list(group[group.method == method].run_dir)
            if not run_dirs:
                continue
            style = {
                "color": method_colour(method),
                "linestyle": BITS_DASHES[parse_method_name(method)[1].get("bits")],
                "marker": FAMILY_MARKERS.get(method_family(method), "o"),
                "markersize": 3,
                "label": method_label(method),
            }
            norms = stacked(curves, run_dirs, "grad_norm_mean")
            epochs = np.arange(1, norms.shape[1] + 1)
            norm_ax = panel_axes["grad_norm_mean"]
            norm_ax.plot(epochs, norms.mean(0), **style)
            norm_ax.fill_between(epochs, norms.min(0), norms.max(0), color=style["color"], alpha=0.15)
            highest = stacked(curves, run_dirs, "grad_norm_max").max(0)
            norm_ax.plot(epochs, highest, color=style["color"], linestyle=style["linestyle"], lw=0.6)
            if "clipped_fraction" in panel_axes:
                clipped = 100 * stacked(curves, run_dirs, "clipped_fraction").mean(0)
                panel_axes["clipped_fraction"].plot(epochs, clipped, **style)
            panel_axes["loss_spikes"].plot(epochs, stacked(curves, run_dirs, "loss_spikes").sum(0), **style)
        for ax, (_, ylabel, log) in zip(row_axes, drawn, strict=True):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.5, not 5e-1
                ax.yaxis.set_minor_formatter(NullFormatter())
        if "clipped_fraction" in panel_axes:
            panel_axes["clipped_fraction"].set_ylim(-3, 103)  # a percentage: 0 and 100 clearly on the axis
        spike_ax = panel_axes["loss_spikes"]
        spike_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        top = max(1.0, spike_ax.get_ylim()[1])  # counts: no fractions when all are 0
        spike_ax.set_ylim(-0.04 * top, top)  # lines at 0 clear of the axis line
        row_axes[0].set_title(f"{model} on {dataset}", loc="left", fontsize=9)
    axes[0][0].plot([], [], color="0.4", lw=0.6, label="thin: the epoch's largest norm")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 / len(groups), 1, 1))
    return save(fig, out_pdf)


def stability_summary(runs: pd.DataFrame, curves: dict[str, dict]) -> list[dict]:
    """Per compared method, over all its runs (datasets, models, seeds) and epochs: the mean
    gradient norm, the largest, the mean percentage of steps clipped, the loss spikes and the
    runs that had any."""
    rows = []
    for method in compared_methods(runs.method.unique()):
        run_dirs = list(runs[runs.method == method].run_dir)
        spikes = stacked(curves, run_dirs, "loss_spikes").sum(1)
        rows.append(
            {
                "method": method,
                "runs": len(run_dirs),
                "grad_norm_mean": float(stacked(curves, run_dirs, "grad_norm_mean").mean()),
                "grad_norm_max": float(stacked(curves, run_dirs, "grad_norm_max").max()),
                "clipped_pct": 100 * float(stacked(curves, run_dirs, "clipped_fraction").mean()),
                "loss_spikes": int(spikes.sum()),
                "runs_with_spikes": int((spikes > 0).sum()),
            }
        )
    return rows


def write_stability_sentence(runs: pd.DataFrame, curves: dict[str, dict], out_tex: str | Path) -> str:
    """``\\GradientStabilitySentence`` for the findings and ``\\GradientStabilityCaption`` for the
    figure, from ``templates/gradient_stability.tex.j2``."""
    return render(
        "gradient_stability.tex.j2",
        out_tex,
        rows=stability_summary(runs, curves),
        clip_thresholds=clip_thresholds(runs[runs.method.isin(compared_methods(runs.method.unique()))]),
        spike_factor=SPIKE_FACTOR,
        spike_window=SPIKE_WINDOW,
        spike_min_rise=SPIKE_MIN_RISE,
    )
