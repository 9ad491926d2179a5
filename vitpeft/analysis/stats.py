"""Statistics across seeds (statsmodels): per-cell means with t-intervals, and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

CELL = ["dataset", "model", "method"]
WILCOXON_MIN_N = 6  # below this the signed-rank test cannot reach p < 0.05 (two-sided)
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
]
# Per-run numbers that describe cost rather than accuracy; quantization columns exist only for
# quantized methods and stay NaN elsewhere.
RESOURCE_COLUMNS = (
    "trainable_params",
    "total_params",
    "trainable_pct",
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
    paired change from the trained model (``int_change`` = INT-N minus trained, per seed).
    """
    if "export_top1_int" in runs:
        runs = runs.assign(int_change=runs["export_top1_int"] - runs["test_top1"])
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
    """``method`` minus ``baseline`` on matched seeds, per dataset x model, with a paired t-test.

    With n seeds the test has n - 1 degrees of freedom; at n = 3 it has little power, and a
    non-significant p-value is not evidence of no difference.
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
        }
        row["p_value"] = row["effect_dz"] = math.nan
        if len(diff) > 1 and np.std(diff) > 0:
            row["t_stat"], row["p_value"], _ = DescrStatsW(diff).ttest_mean(0.0)
            row["effect_dz"] = diff.mean() / diff.std(ddof=1)  # Cohen's d_z for paired samples
        if len(diff) >= WILCOXON_MIN_N:
            row["wilcoxon_p"] = scipy_stats.wilcoxon(diff).pvalue  # statsmodels has no signed-rank test
        rows.append(row)
    return pd.DataFrame(
        rows, columns=COMPARISON_COLUMNS + (["wilcoxon_p"] if any("wilcoxon_p" in r for r in rows) else [])
    )


def comparisons(runs: pd.DataFrame, baselines=("lora_r8", "full"), metric: str = "test_top1") -> pd.DataFrame:
    """Every method against each baseline on matched seeds, Holm-corrected within each family.

    A family is one baseline on one dataset x model: the set of tests a reader scans together.
    """
    frames = []
    for baseline in baselines:
        if baseline not in set(runs.method):
            continue
        for method in sorted(set(runs.method) - {baseline}):
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


def rank_ablation(runs: pd.DataFrame, family: str = "lora", metric: str = "test_top1") -> dict[str, float]:
    """OLS of accuracy on log2(rank) over the ``lora_r{r}`` runs, with model and dataset effects
    when the study has more than one of either. Returns the slope (points per doubling of r)."""
    from vitpeft.methods import parse_method_name

    parsed = runs.method.map(parse_method_name)
    subset = runs[parsed.map(lambda p: p[0] == family)].assign(
        log2_rank=parsed.map(lambda p: math.log2(p[1].get("r", 1)))
    )
    if subset.log2_rank.nunique() < 2 or len(subset) < 3:
        return {
            "n": len(subset),
            "slope": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_value": math.nan,
        }
    terms = ["log2_rank"] + [f"C({c})" for c in ("model", "dataset") if subset[c].nunique() > 1]
    fit = smf.ols(f"{metric} ~ {' + '.join(terms)}", data=subset).fit()
    low, high = fit.conf_int().loc["log2_rank"]
    return {
        "n": len(subset),
        "slope": fit.params["log2_rank"],
        "ci_low": low,
        "ci_high": high,
        "p_value": fit.pvalues["log2_rank"],
        "r_squared": fit.rsquared,
    }


def write_stats(
    runs_csv,
    out_cell_stats,
    out_transfer,
    out_comparisons,
    out_rank_ablation,
    baseline: str = "scratch",
    reference: str = "full",
) -> None:
    """The stats rule: per-cell statistics, the transfer check (``reference`` vs ``baseline``),
    Holm-corrected paired comparisons against lora_r8 and full, and the rank ablation."""
    from vitpeft.analysis.aggregate import write_csv
    from vitpeft.io import write_json

    runs = pd.read_csv(runs_csv)
    write_csv(cell_stats(runs), out_cell_stats)
    write_csv(paired_difference(runs, reference, baseline), out_transfer)
    write_csv(comparisons(runs[runs.method != baseline]), out_comparisons)
    write_json(out_rank_ablation, rank_ablation(runs))
