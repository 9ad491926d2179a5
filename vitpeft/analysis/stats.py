"""Statistics across seeds (statsmodels): per-cell means with t-intervals, and paired differences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.weightstats import DescrStatsW

CELL = ["dataset", "model", "method"]
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
    "quant_feature_rel_error",
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
    """One row per dataset x model x method: mean, std and 95% CI of each metric over seeds."""
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
        row["p_value"] = math.nan
        if len(diff) > 1 and np.std(diff) > 0:
            row["t_stat"], row["p_value"], _ = DescrStatsW(diff).ttest_mean(0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def write_stats(
    runs_csv, out_cell_stats, out_transfer, baseline: str = "scratch", reference: str = "full"
) -> None:
    """The stats rule: per-cell statistics, and the transfer check (``reference`` vs ``baseline``)."""
    from vitpeft.analysis.aggregate import write_csv

    runs = pd.read_csv(runs_csv)
    write_csv(cell_stats(runs), out_cell_stats)
    transfer = paired_difference(runs, reference, baseline)
    if transfer.empty:
        transfer = pd.DataFrame(
            columns=[
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
            ]
        )
    write_csv(transfer, out_transfer)
