"""Statistics across seeds (statsmodels): per-cell means with t-intervals, and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.descriptivestats import sign_test
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

CELL = ["dataset", "model", "method"]
WILCOXON_MIN_N = 6  # below this the signed-rank test cannot reach p < 0.05 (two-sided)
# Differences closer than this are one value: accuracies are percentages of whole test images, and
# float subtraction leaves ~1e-14 noise that would otherwise give a t-test with an absurd t.
SAME_DIFFERENCE = 1e-9
COMPARISON_COLUMNS = [
    "dataset",
    "model",
    "method",
    "baseline",
    "diff_n",
    "diff_mean",
    "diff_std",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "t_stat",
    "effect_dz",
    "p_test",
]
# Per-run numbers that describe cost rather than accuracy; quantization columns exist only for
# quantized methods and stay NaN elsewhere.
RESOURCE_COLUMNS = (
    "trainable_params",
    "total_params",
    "trainable_pct",
    "train_peak_mem_mb",
    "eval_peak_mem_mb",
    "peak_mem_mb",
    "train_time_s",
    "base_linear_bytes_fp32",
    "base_linear_bytes_quantized",
    "base_bits_per_weight",
    "quant_feature_rel_error",
    "export_int_bits",
    "export_int_group_size",
    "export_onnx_bytes",
    "export_int_onnx_bytes",
)


def mean_ci(values, alpha: float = 0.05) -> dict[str, float]:
    """Mean, sample std and a (1 - alpha) Student-t interval for the mean.

    With one value the spread and interval are undefined and returned as NaN, never as zero.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if n == 1:
        return {"n": 1, "mean": float(values[0]), "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    stats = DescrStatsW(values)
    low, high = stats.tconfint_mean(alpha=alpha)
    return {"n": n, "mean": stats.mean, "std": stats.std_mean * math.sqrt(n), "ci_low": low, "ci_high": high}


def cell_stats(runs: pd.DataFrame, metrics=("test_top1", "test_top5", "val_top1")) -> pd.DataFrame:
    """One row per dataset x model x method: mean, std and 95% CI of each metric over seeds.

    Runs that were exported also get the INT-N model's test top-1 (``export_top1_int``) and its
    paired change (``int_change``, per seed): INT-N minus the trained model as the export rebuilt
    it (``export_top1_unmerged``), both evaluated on the export's device. That equals the trained
    top-1 where the export ran as training did, and is within ``vitpeft.reproduce``'s tolerance of
    it elsewhere (a GPU run exported on CPU), so the change holds no device difference.
    """
    if "export_top1_int" in runs:
        runs = runs.assign(int_change=runs["export_top1_int"] - runs["export_top1_unmerged"])
        metrics = (*metrics, "export_top1_int", "int_change")
    rows = []
    for key, group in runs.groupby(CELL, sort=True):
        row = dict(zip(CELL, key, strict=True))
        for metric in metrics:
            for stat, value in mean_ci(group[metric]).items():
                row[f"{metric}_{stat}" if stat != "n" else "n_seeds"] = value
        for column in RESOURCE_COLUMNS:
            row[column] = group[column].mean() if column in group else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(
    runs: pd.DataFrame, method: str, baseline: str, metric: str = "test_top1"
) -> pd.DataFrame:
    """``method`` minus ``baseline`` on matched seeds, per dataset x model, with a paired test.

    With n seeds the t-test has n - 1 degrees of freedom; at n = 3 it has little power, and a
    non-significant p-value is not evidence of no difference. ``p_test`` names the test behind
    ``p_value`` (see ``paired_p_value``); one seed gives no test and a NaN p.
    """
    rows = []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        a = group[group.method == method].set_index("seed")[metric]
        b = group[group.method == baseline].set_index("seed")[metric]
        seeds = a.index.intersection(b.index)
        if len(seeds) == 0:
            continue
        diff = (a.loc[seeds] - b.loc[seeds]).to_numpy()
        row = {
            "dataset": dataset,
            "model": model,
            "method": method,
            "baseline": baseline,
            **{f"diff_{k}": v for k, v in mean_ci(diff).items()},
            **paired_p_value(diff),
        }
        if len(diff) >= WILCOXON_MIN_N:
            row["wilcoxon_p"] = scipy_stats.wilcoxon(diff).pvalue  # statsmodels has no signed-rank test
        rows.append(row)
    return pd.DataFrame(
        rows, columns=COMPARISON_COLUMNS + (["wilcoxon_p"] if any("wilcoxon_p" in r for r in rows) else [])
    )


def paired_p_value(diff: np.ndarray) -> dict[str, float | str]:
    """The two-sided p-value of paired differences, and the test that gave it (``p_test``).

    - ``paired t``: the differences vary; also gives ``t_stat`` and Cohen's ``effect_dz``.
    - ``exact sign``: every seed gave the same nonzero difference, so the t statistic is undefined
      (zero spread); the exact sign test gives 2 * 0.5**n, the smallest p that n seeds can give.
    - ``all zero``: every difference is zero; nothing differs, p = 1.

    All three keep the comparison in its Holm family, where a NaN would silently drop it. With
    one seed there is no test (NaN p, empty ``p_test``).
    """
    result = {"p_value": math.nan, "t_stat": math.nan, "effect_dz": math.nan, "p_test": ""}
    if len(diff) < 2:
        return result
    if np.allclose(diff, 0.0, rtol=0.0, atol=SAME_DIFFERENCE):
        return {**result, "p_value": 1.0, "p_test": "all zero"}
    if np.allclose(diff, diff[0], rtol=0.0, atol=SAME_DIFFERENCE):
        return {**result, "p_value": float(sign_test(diff, mu0=0.0)[1]), "p_test": "exact sign"}
    t_stat, p_value, _ = DescrStatsW(diff).ttest_mean(0.0)
    effect_dz = diff.mean() / diff.std(ddof=1)  # Cohen's d_z for paired samples
    return {"p_value": p_value, "t_stat": t_stat, "effect_dz": effect_dz, "p_test": "paired t"}


def comparisons(runs: pd.DataFrame, baselines=("lora_r8", "full"), metric: str = "test_top1") -> pd.DataFrame:
    """Every method against each baseline on matched seeds, Holm-corrected within each family.

    A family is one baseline on one dataset x model: the set of tests a reader scans together.
    Each pair is tested once: two baselines are compared only in the family of the one listed
    first (``full`` minus ``lora_r8`` with ``lora_r8``), not again with the signs swapped.
    """
    frames = []
    present = [b for b in baselines if b in set(runs.method)]
    for i, baseline in enumerate(present):
        for method in sorted(set(runs.method) - set(present[: i + 1])):
            frames.append(paired_difference(runs, method, baseline, metric))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COMPARISON_COLUMNS)
    table["p_holm"] = math.nan
    for _, family in table.groupby(["baseline", "dataset", "model"]):
        tested = family["p_value"].notna()
        if tested.any():
            table.loc[family.index[tested], "p_holm"] = multipletests(
                family.loc[tested, "p_value"], method="holm"
            )[1]
    return table


def rank_ablation(
    runs: pd.DataFrame, family: str = "lora", metric: str = "test_top1"
) -> dict[str, float | str]:
    """OLS of accuracy on log2(rank) over the ``lora_r{r}`` runs, within cells.

    Every model x dataset cell gets its own intercept (a fixed effect), so the slope (points per
    doubling of r) compares ranks only within a cell. Runs of one cell share a backbone and data,
    so their errors are not independent: with several cells the standard errors are clustered by
    cell (t with cells - 1 degrees of freedom, statsmodels' small-sample correction). One cell is
    a single cluster, where that estimator is undefined; there the runs (one per seed and rank)
    get heteroscedasticity-robust HC3 errors. ``cov_type`` and ``n_cells`` record which was used.
    """
    from vitpeft.methods import parse_method_name

    parsed = runs.method.map(parse_method_name)
    subset = runs[parsed.map(lambda p: p[0] == family)].assign(
        log2_rank=parsed.map(lambda p: math.log2(p[1].get("r", 1))),
        cell=runs.model.astype(str) + " on " + runs.dataset.astype(str),
    )
    n_cells = subset.cell.nunique()
    result = {"n": len(subset), "n_cells": n_cells}
    # The slope is seen only within a cell, so some cell needs two ranks.
    if len(subset) < 3 or not (subset.groupby("cell").log2_rank.nunique() > 1).any():
        nan = math.nan
        return {
            **result,
            "slope": nan,
            "ci_low": nan,
            "ci_high": nan,
            "p_value": nan,
            "cov_type": "",
            "df": nan,
        }
    formula = f"{metric} ~ log2_rank" + (" + C(cell)" if n_cells > 1 else "")
    if n_cells > 1:
        groups = pd.factorize(subset.cell)[0]
        fit = smf.ols(formula, data=subset).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    else:
        fit = smf.ols(formula, data=subset).fit(cov_type="HC3", use_t=True)
    low, high = fit.conf_int().loc["log2_rank"]
    return {
        **result,
        "slope": fit.params["log2_rank"],
        "ci_low": low,
        "ci_high": high,
        "p_value": fit.pvalues["log2_rank"],
        "r_squared": fit.rsquared,
        "cov_type": fit.cov_type,
        "df": float(getattr(fit, "df_resid_inference", fit.df_resid)),  # of the t behind CI and p
    }


def write_stats(
    runs_csv,
    out_cell_stats,
    out_transfer,
    out_comparisons,
    out_rank_ablation,
    transfer_runs_csv=None,
) -> None:
    """The stats rule: per-cell statistics, Holm-corrected paired comparisons against lora_r8 and
    full, the rank ablation, and the transfer check: full fine-tuning vs scratch on the runs of
    ``transfer_runs_csv`` (the study's seeds and the check's extra ones; default ``runs_csv``)."""
    from vitpeft.analysis.aggregate import write_csv
    from vitpeft.config import TRANSFER_BASELINE as baseline
    from vitpeft.config import TRANSFER_REFERENCE as reference
    from vitpeft.io import write_json

    runs = pd.read_csv(runs_csv)
    write_csv(cell_stats(runs), out_cell_stats)
    write_csv(
        paired_difference(pd.read_csv(transfer_runs_csv or runs_csv), reference, baseline), out_transfer
    )
    write_csv(comparisons(runs[runs.method != baseline]), out_comparisons)
    write_json(out_rank_ablation, rank_ablation(runs))
