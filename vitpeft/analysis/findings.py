"""The findings section and the abstract's closing sentences, chosen by the statistics.

Each claim is a small dict computed from the stats files; the templates ``findings.tex.j2`` and
``abstract_findings.tex.j2`` turn it into prose. A claim's ``verdict`` decides its wording:

- ``higher`` / ``lower``: the 95% interval of the paired difference excludes zero and the
  (Holm-corrected, where the comparison has a family) p-value is below 0.05;
- ``uncorrected``: the interval excludes zero and the p-value before correction is below 0.05,
  but the Holm-corrected one is not;
- ``too_few_seeds``: every seed gives the same nonzero difference, so the interval has no width and
  the exact sign test gives its smallest p, 2 * 0.5**n, which at n seeds may not reach 0.05
  before any correction (0.25 at 3 seeds);
- ``unclear``: the interval includes zero, or one seed gives none: the data cannot tell.

Every p-value belongs to a Holm family (:data:`HOLM_FAMILIES`): the comparisons against one
baseline in one dataset x model cell (``stats.comparisons``), LoRA's rank doublings in one cell,
or QA-LoRA's deployed INT-N comparisons in one cell. A claim outside them says its p is
uncorrected. A comparison that the study did not run (a method missing) yields no claim and no
sentence.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pandas as pd
from statsmodels.stats.multitest import multipletests

from vitpeft.analysis import stats
from vitpeft.analysis.figures import MEMORY_COLUMN, pareto_front
from vitpeft.analysis.style import method_family, method_sort_key
from vitpeft.analysis.tables import RANK_REFERENCE, SIGNIFICANCE, qalora_merge_gap, render
from vitpeft.io import read_json
from vitpeft.methods import parse_method_name

REFERENCE_FULL = "full"
# The Pareto frontiers that the findings name: cost column -> how the text calls the cost.
FRONTIER_COSTS = {"trainable_params": "trainable parameters", MEMORY_COLUMN: "peak training memory"}
# The Holm families the findings read their p-values from, as the section names them.
HOLM_FAMILIES = (
    "the comparisons against one baseline (LoRA at $r = 8$, or full fine-tuning) on one model and data set",
    "the doublings of LoRA's rank on one model and data set",
    "the deployed INT-$N$ comparisons on one model and data set",
)
# The tests of ``stats.paired_p_value`` whose differences are one value on every seed.
IDENTICAL_TESTS = ("exact sign", "all zero")


def verdict(low: float, high: float, p: float, uncorrected_p: float | None = None) -> str:
    """``higher``, ``lower``, ``uncorrected``, ``too_few_seeds`` or ``unclear`` (see the module
    docstring). ``uncorrected_p``: the p-value before Holm correction, where ``p`` is corrected;
    without it a non-significant ``p`` is taken to be the correction's doing."""
    if any(math.isnan(v) for v in (low, high)) or low <= 0.0 <= high:
        return "unclear"
    if math.isnan(p) or p >= SIGNIFICANCE:
        if uncorrected_p is not None and not uncorrected_p < SIGNIFICANCE:
            return "too_few_seeds"
        return "uncorrected"
    return "higher" if low > 0 else "lower"


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value that n paired seeds can give (the exact sign test with every
    difference of one sign): 2 * 0.5**n, 0.25 at 3 seeds."""
    return 2.0 * 0.5**n


def oriented(row: dict[str, Any], sign: float, p_column: str, method: str, baseline: str) -> dict[str, Any]:
    """A paired-difference row as ``method`` minus ``baseline`` (``sign`` -1 flips a row stored the
    other way round), with its verdict. ``identical``: every seed gave the same difference, so the
    interval has no width and is not printed."""
    low, high = sign * row["diff_ci_low"], sign * row["diff_ci_high"]
    if sign < 0:
        low, high = high, low
    p, uncorrected_p = row[p_column], row["p_value"]
    n = int(row["diff_n"])
    return {
        "method": method,
        "baseline": baseline,
        "diff": sign * row["diff_mean"],
        "low": low,
        "high": high,
        "n": n,
        "p": p,
        "uncorrected_p": uncorrected_p,
        "holm": p_column == "p_holm",
        "identical": row.get("p_test") in IDENTICAL_TESTS,
        "smallest_p": smallest_p(n),
        "verdict": verdict(low, high, p, uncorrected_p),
    }


def holm(rows: list[dict[str, Any]]) -> None:
    """Add ``p_holm`` to each row, Holm-corrected over the rows that have a p-value (NaN where one
    seed gave none): one family."""
    tested = [row for row in rows if not math.isnan(row["p_value"])]
    corrected = multipletests([row["p_value"] for row in tested], method="holm")[1] if tested else []
    for row in rows:
        row["p_holm"] = math.nan
    for row, p in zip(tested, corrected, strict=True):
        row["p_holm"] = p


def paired(
    runs: pd.DataFrame, compared: pd.DataFrame, dataset: str, model: str, method: str, baseline: str
) -> dict[str, Any] | None:
    """``method`` minus ``baseline`` in one cell: from the Holm-corrected comparisons where the
    pair is one of them (either way round), else a paired test on the runs with its own p-value.
    None when either method is missing."""
    cell = compared[(compared.dataset == dataset) & (compared.model == model)]
    for a, b, sign in ((method, baseline, 1.0), (baseline, method, -1.0)):
        found = cell[(cell.method == a) & (cell.baseline == b)]
        if len(found):
            return oriented(found.iloc[0].to_dict(), sign, "p_holm", method, baseline)
    in_cell = runs[(runs.dataset == dataset) & (runs.model == model)]
    table = stats.paired_difference(in_cell, method, baseline)
    return oriented(table.iloc[0].to_dict(), 1.0, "p_value", method, baseline) if len(table) else None


def frontiers(group: pd.DataFrame) -> dict[str, list[str]]:
    """Per cost in :data:`FRONTIER_COSTS`, the methods on the Pareto frontier of mean test top-1
    (cheapest first), over the methods that adapt the pretrained backbone (as Figure 1 draws it)."""
    adapting = group[group.method.map(method_family) != "scratch"]
    out = {}
    for cost in FRONTIER_COSTS:
        if cost in adapting and adapting[cost].notna().any():
            out[cost] = list(adapting.iloc[pareto_front(adapting[cost], adapting["test_top1_mean"])].method)
    return out


def rank_steps(runs: pd.DataFrame, dataset: str, model: str) -> dict[str, Any] | None:
    """LoRA's rank ladder in one cell: each doubling (next rank minus this one, paired on seeds,
    Holm-corrected over the steps), and the rank after which accuracy no longer rises
    significantly (``stops_at``): the start of the first step after which no step is
    significantly higher. None while the last step still rises."""
    in_cell = runs[(runs.dataset == dataset) & (runs.model == model)]
    lora = sorted({m for m in in_cell.method if method_family(m) == "lora"}, key=method_sort_key)
    if len(lora) < 2:
        return None
    pairs = list(itertools.pairwise(lora))
    tables = [stats.paired_difference(in_cell, upper, lower) for lower, upper in pairs]
    rows = [t.iloc[0].to_dict() for t in tables if len(t)]
    if len(rows) != len(lora) - 1:
        return None
    holm(rows)
    steps = [
        {
            **oriented(row, 1.0, "p_holm", upper, lower),
            "from_r": parse_method_name(lower)[1]["r"],
            "to_r": parse_method_name(upper)[1]["r"],
        }
        for row, (lower, upper) in zip(rows, pairs, strict=True)
    ]
    last_rise = max((i for i, s in enumerate(steps) if s["verdict"] == "higher"), default=-1)
    stop = steps[last_rise + 1] if last_rise + 1 < len(steps) else None
    return {
        "ranks": [parse_method_name(m)[1]["r"] for m in lora],
        "steps": steps,
        "stop": stop,
        "stops_at": stop["from_r"] if stop else None,
        "every_step_rises": all(s["verdict"] == "higher" for s in steps),
    }


def deployment(runs: pd.DataFrame, cells: pd.DataFrame, dataset: str, model: str) -> list[dict[str, Any]]:
    """QA-LoRA's INT-N merge against LoRA at its rank merged in fp32 and then quantized to the same
    bits and group size: each one's change from its trained model (INT-N minus trained, per seed)
    and the paired difference of the two deployed INT-N models, Holm-corrected over the cell's
    deployed comparisons (one family)."""
    if "int_change_mean" not in cells:
        return []
    in_cell = cells[(cells.dataset == dataset) & (cells.model == model)].set_index("method")
    runs_cell = runs[(runs.dataset == dataset) & (runs.model == model)]
    out, tested = [], []
    for method in sorted(m for m in in_cell.index if method_family(m) == "qalora"):
        naive = f"lora_r{parse_method_name(method)[1]['r']}"
        if naive not in in_cell.index or pd.isna(in_cell.loc[[method, naive], "int_change_mean"]).any():
            continue
        q, n = in_cell.loc[method], in_cell.loc[naive]
        if (q.export_int_bits, q.export_int_group_size) != (n.export_int_bits, n.export_int_group_size):
            continue  # not the same INT-N format: nothing to compare
        change = {}
        for name, row in ((method, q), (naive, n)):
            low, high = row["int_change_ci_low"], row["int_change_ci_high"]
            change[name] = {
                "diff": row["int_change_mean"],
                "low": low,
                "high": high,
                "kept": verdict(low, high, 0.0) == "unclear",  # no change the data can see
            }
        table = stats.paired_difference(runs_cell, method, naive, metric="export_top1_int")
        row = table.iloc[0].to_dict() if len(table) else None
        if row:
            tested.append(row)
        out.append(
            {
                "method": method,
                "naive": naive,
                "bits": int(q.export_int_bits),
                "group_size": int(q.export_int_group_size),
                "int_top1": q.export_top1_int_mean,
                "naive_int_top1": n.export_top1_int_mean,
                "merge_gap": qalora_merge_gap(runs_cell[runs_cell.method == method]),
                "change": change[method],
                "naive_change": change[naive],
                "deployed": row,
            }
        )
    holm(tested)
    for d in out:
        if d["deployed"]:
            d["deployed"] = oriented(d["deployed"], 1.0, "p_holm", d["method"], d["naive"])
    return out


def cell_findings(
    runs: pd.DataFrame, cells: pd.DataFrame, compared: pd.DataFrame, dataset: str, model: str
) -> dict[str, Any]:
    """Every claim for one dataset x model cell; a claim whose methods the study lacks is None or
    empty."""
    group = cells[(cells.dataset == dataset) & (cells.model == model)]
    methods = set(group.method)
    reference_rank = parse_method_name(RANK_REFERENCE)[1]["r"]

    def same_rank(family: str) -> list[str]:
        return sorted(
            (
                m
                for m in methods
                if method_family(m) == family and parse_method_name(m)[1].get("r") == reference_rank
            ),
            key=method_sort_key,
        )

    quantized = [paired(runs, compared, dataset, model, m, RANK_REFERENCE) for m in same_rank("qlora")]
    adaptive = [paired(runs, compared, dataset, model, m, RANK_REFERENCE) for m in same_rank("adalora")]
    return {
        "dataset": dataset,
        "model": model,
        "frontiers": frontiers(group),
        "lora_vs_full": paired(runs, compared, dataset, model, RANK_REFERENCE, REFERENCE_FULL),
        "quantized": [q for q in quantized if q] if RANK_REFERENCE in methods else [],
        "deployment": deployment(runs, cells, dataset, model),
        "adalora": [a for a in adaptive if a] if RANK_REFERENCE in methods else [],
        "rank": rank_steps(runs, dataset, model),
    }


def findings(
    runs: pd.DataFrame, cells: pd.DataFrame, compared: pd.DataFrame, rank_fit: dict[str, Any]
) -> dict[str, Any]:
    """The claims of the whole study: one entry per dataset x model cell, the study-wide rank fit
    (``stats.rank_ablation``), and counts of each verdict for the abstract."""
    runs = runs[runs.method != "scratch"]  # the transfer check has its own paragraph
    per_cell = [
        cell_findings(runs, cells, compared, dataset, model)
        for (dataset, model), _ in cells.groupby(["dataset", "model"], sort=True)
    ]

    def tally(claims: list[dict | None]) -> dict[str, int]:
        verdicts = [c["verdict"] for c in claims if c]
        return {
            v: verdicts.count(v) for v in ("higher", "lower", "uncorrected", "too_few_seeds", "unclear")
        } | {"n": len(verdicts)}

    return {
        "cells": per_cell,
        "rank_fit": rank_fit,
        "tally": {
            "lora_vs_full": tally([c["lora_vs_full"] for c in per_cell]),
            "quantized": tally([q for c in per_cell for q in c["quantized"]]),
            "adalora": tally([a for c in per_cell for a in c["adalora"]]),
            "deployed": tally([d["deployed"] for c in per_cell for d in c["deployment"]]),
        },
        "significance": SIGNIFICANCE,
        "families": HOLM_FAMILIES,
        "reference": RANK_REFERENCE,
        "costs": FRONTIER_COSTS,
    }


def write_findings(
    runs_csv, cell_stats_csv, comparisons_csv, rank_ablation_json, out_findings, out_abstract
) -> dict[str, Any]:
    """The findings rule: ``findings.tex`` (a section) and ``abstract_findings.tex`` (the
    abstract's closing sentences), from the stats rule's files."""
    claims = findings(
        pd.read_csv(runs_csv),
        pd.read_csv(cell_stats_csv),
        pd.read_csv(comparisons_csv),
        read_json(rank_ablation_json),
    )
    render("findings.tex.j2", Path(out_findings), **claims)
    render("abstract_findings.tex.j2", Path(out_abstract), **claims)
    return claims
