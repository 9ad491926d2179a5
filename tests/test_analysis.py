import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from vitpeft.analysis import aggregate, figures, stats, tables
from vitpeft.analysis.style import macro_name, method_colour, method_label
from vitpeft.io import read_json, write_json


def test_mean_ci_matches_the_t_interval():
    values = [70.0, 72.0, 77.0]
    result = stats.mean_ci(values)
    half = scipy_stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert result["mean"] == pytest.approx(73.0)
    assert result["std"] == pytest.approx(np.std(values, ddof=1))
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((73.0 - half, 73.0 + half))


def test_mean_ci_of_one_value_has_no_interval():
    result = stats.mean_ci([81.5])
    assert result["mean"] == 81.5 and math.isnan(result["ci_low"]) and math.isnan(result["std"])


def test_ci_covers_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 2000
    for _ in range(trials):
        result = stats.mean_ci(rng.normal(50.0, 3.0, size=3))
        covered += result["ci_low"] <= 50.0 <= result["ci_high"]
    assert abs(covered / trials - 0.95) < 0.015


def synthetic_runs(effect: float, seeds: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        shared = rng.normal(0, 2)  # a per-seed effect that pairing removes
        rows.append(
            {
                "dataset": "d",
                "model": "m",
                "method": "scratch",
                "seed": s,
                "test_top1": 60 + shared + rng.normal(0, 0.5),
            }
        )
        rows.append(
            {
                "dataset": "d",
                "model": "m",
                "method": "full",
                "seed": s,
                "test_top1": 60 + effect + shared + rng.normal(0, 0.5),
            }
        )
    return pd.DataFrame(rows)


def test_paired_difference_finds_a_planted_effect_and_stays_quiet_on_a_null():
    found = stats.paired_difference(synthetic_runs(effect=3.0), "full", "scratch").iloc[0]
    assert found["diff_mean"] == pytest.approx(3.0, abs=0.6)
    assert found["p_value"] < 0.001 and found["diff_ci_low"] > 0
    false_positives = sum(
        stats.paired_difference(synthetic_runs(effect=0.0, seed=k), "full", "scratch").iloc[0]["p_value"]
        < 0.05
        for k in range(200)
    )
    assert false_positives / 200 < 0.1


def fake_run(root, method, seed, acc):
    run_dir = root / "runs" / "digits" / method / "deit_tiny" / f"seed{seed}"
    write_json(
        run_dir / "metrics.json",
        {
            "dataset": "digits",
            "model": "deit_tiny",
            "method": method,
            "seed": seed,
            "test_top1": acc,
            "test_top5": 99.0,
            "val_top1": acc - 1,
            "trainable_params": 1930 if method == "linear" else 112522,
            "total_params": 5353546,
            "trainable_pct": 2.1,
            "peak_mem_mb": 900.0,
            "train_time_s": 12.5,
            "epochs": 2,
            "curves": {"val_top1": [acc - 10, acc - 1], "train_loss": [1.0, 0.5]},
        },
    )
    write_json(
        run_dir / "provenance.json",
        {
            "git_commit": "abc",
            "git_dirty": False,
            "packages": {"torch": "2.14.1"},
            "hardware": {"cpu": "Test CPU", "hostname": "h"},
            "threads": 1,
        },
    )
    return run_dir / "metrics.json"


def fake_export(metrics_path, int_top1):
    """An export report as the export rule writes it (only the fields the analysis reads)."""
    path = metrics_path.parent / "export" / "report.json"
    top1 = read_json(metrics_path)["test_top1"]
    gap = {"max_abs": 1e-6, "max_rel": 1e-7}
    write_json(
        path,
        {
            "test_top1": {
                "unmerged": top1,
                "merged": top1,
                "onnx": top1,
                "int": int_top1,
                "int_onnx": int_top1,
            },
            "logits": {"merged_vs_unmerged": gap, "onnx_vs_merged": gap, "int_onnx_vs_int": gap},
            "bytes": {"safetensors": 3 * 2**20, "onnx": 3 * 2**20, "int_onnx": 2**20},
            "int": {"route": "float merge, then quantized", "bits": 4, "group_size": 16},
        },
    )
    return path


@pytest.fixture
def study_tables(tmp_path):
    cells = []
    for method, accs in {
        "full": [80.0, 82.0],
        "scratch": [60.0, 61.0],
        "linear": [40.0, 44.0],
        "lora_r8": [70.0, 75.5],
    }.items():
        paths = [fake_run(tmp_path, method, s, a) for s, a in enumerate(accs)]
        exports = [fake_export(p, a - 2 * s) for s, (p, a) in enumerate(zip(paths, accs, strict=True))]
        cell = tmp_path / f"{method}_digits"
        frame = aggregate.summarize_cell(paths, cell / "summary.csv", export_paths=exports)
        assert list(frame.seed) == [0, 1] and frame.git_commit.tolist() == ["abc", "abc"]
        cells.append(cell / "summary.csv")
    aggregate.aggregate(cells, tmp_path / "runs.csv")
    stats.write_stats(
        tmp_path / "runs.csv",
        tmp_path / "cells.csv",
        tmp_path / "transfer.csv",
        tmp_path / "comparisons.csv",
        tmp_path / "rank.json",
    )
    return tmp_path


def test_summarize_cell_rejects_mixed_cells(tmp_path):
    paths = [fake_run(tmp_path, "full", 0, 80.0), fake_run(tmp_path, "linear", 0, 40.0)]
    with pytest.raises(ValueError, match="one method on one dataset"):
        aggregate.summarize_cell(paths, tmp_path / "summary.csv")


def test_stats_tables_and_figures_from_runs(study_tables, tmp_path):
    cells = pd.read_csv(study_tables / "cells.csv")
    full = cells[cells.method == "full"].iloc[0]
    assert full["test_top1_mean"] == 81.0 and full["n_seeds"] == 2
    transfer = pd.read_csv(study_tables / "transfer.csv").iloc[0]
    assert transfer["diff_mean"] == pytest.approx(20.5)

    manifest = {
        "source": {"name": "digits", "split_seed": 0},
        "class_names": list("0123456789"),
        "image_shape": [8, 8, 1],
        "counts_per_class": {"train": [1] * 10, "val": [1] * 10, "test": [1] * 10},
    }
    write_json(tmp_path / "data" / "digits" / "manifest.json", manifest)
    study = {
        "title": "T_1 & co",
        "description": "d",
        "models": ["deit_tiny"],
        "datasets": ["digits"],
        "seeds": [0, 1],
    }
    config = {
        "study": "s",
        "studies": {"s": study},
        "models": {"deit_tiny": {"img_size": 16, "patch_size": 4, "backbone": {"source": "pretrain"}}},
        "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0.5, "grad_clip": 1.0},
        "methods": {"full": {"lr": 0.001}, "lora": {"lr": 0.005}},
    }
    out = tmp_path / "paper"
    tables.write_tables(
        study_tables / "runs.csv",
        study_tables / "cells.csv",
        study_tables / "transfer.csv",
        study_tables / "comparisons.csv",
        study_tables / "rank.json",
        config,
        [],
        [tmp_path / "data" / "digits" / "manifest.json"],
        out,
    )
    results = (out / "results_table.tex").read_text()
    assert r"\textbf{81.0} $\pm$ 12.7" in results  # t(0.975, 1) * 1.414 / sqrt(2) = 12.7
    assert "LoRA ($r{=}8$)" in results and r"deit\_tiny" in results
    assert "75.50" in (out / "runs_table.tex").read_text()
    macros = (out / "macros.tex").read_text()
    assert r"\newcommand{\FullDigitsDeitTinyTopOne}{81.0}" in macros
    assert r"\newcommand{\StudyTitle}{T\_1 \& co}" in macros
    assert "beats" in (out / "transfer.tex").read_text()
    quantized = (out / "quantization_table.tex").read_text()
    # full: trained 80, 82; INT-N 80, 80: mean 80.0, change 0 and -2 -> -1.0 [-13.7, 11.7]
    assert (
        r"Full fine-tuning & 112{,}522 & 81.0 & 80.0 (4, 16) & -1.0 {\scriptsize [-13.7, 11.7]} & 3.00 & 1.00"
        in quantized
    )
    assert r"\newcommand{\FullDigitsDeitTinyIntChange}{-1.0}" in macros
    compared = (out / "comparisons.tex").read_text()
    assert r"Full fine-tuning & Linear probe & -39.0 [-51.7, -26.3]" in compared
    assert "Rank ablation" not in compared  # one LoRA rank: no slope to fit
    assert (
        "1 0 train" not in (out / "setup.tex").read_text() and "10 train" in (out / "setup.tex").read_text()
    )

    figures.make_figures(study_tables / "runs.csv", study_tables / "cells.csv", out / "a.pdf", out / "c.pdf")
    for name in ("a.pdf", "c.pdf"):
        assert (out / name).read_bytes().startswith(b"%PDF")


def test_style_names_and_colours():
    assert macro_name("lora_r16", "digits", "top1") == "LoraROneSixDigitsTopOne"
    assert method_label("lora_r8") == "LoRA r=8"
    assert method_colour("lora_r8") == method_colour("lora_r32") != method_colour("full")


def test_comparisons_are_holm_corrected_within_each_family():
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(6):
        for method, effect in {"lora_r8": 0.0, "full": 4.0, "linear": -10.0, "lora_r2": 0.3}.items():
            rows.append(
                {
                    "dataset": "d",
                    "model": "m",
                    "method": method,
                    "seed": seed,
                    "test_top1": 60 + effect + rng.normal(0, 1),
                }
            )
    table = stats.comparisons(pd.DataFrame(rows))
    family = table[table.baseline == "lora_r8"].sort_values("p_value")
    raw = family.p_value.to_numpy()
    holm = np.maximum.accumulate(np.minimum(1, raw * np.arange(len(raw), 0, -1)))
    np.testing.assert_allclose(family.p_holm, holm)
    assert set(table.baseline) == {"lora_r8", "full"} and len(table) == 6
    linear = family[family.method == "linear"].iloc[0]
    assert linear.p_holm < 0.001 and linear.effect_dz < -3 and "wilcoxon_p" in table


def test_rank_ablation_recovers_a_planted_slope():
    rng = np.random.default_rng(4)
    rows = [
        {
            "dataset": "d",
            "model": model,
            "method": f"lora_r{r}",
            "seed": s,
            "test_top1": 50 + 2.0 * np.log2(r) + (5 if model == "b" else 0) + rng.normal(0, 0.5),
        }
        for r in (2, 4, 8, 16, 32)
        for s in range(3)
        for model in ("a", "b")
    ]
    rows.append({"dataset": "d", "model": "a", "method": "full", "seed": 0, "test_top1": 99.0})
    result = stats.rank_ablation(pd.DataFrame(rows))
    assert result["n"] == 30 and result["ci_low"] < 2.0 < result["ci_high"]
    assert result["slope"] == pytest.approx(2.0, abs=0.3) and result["p_value"] < 1e-6


def test_every_method_family_has_a_label_colour_marker_and_place():
    from vitpeft.analysis import style
    from vitpeft.methods import METHODS

    for table in (style.FAMILY_COLOURS, style.FAMILY_MARKERS, style.FAMILY_LABELS):
        assert set(table) == set(METHODS)
    assert sorted(style.FAMILY_ORDER) == sorted(METHODS)
    assert style.method_label("qalora4_r8", latex=True) == "QA-LoRA 4-bit ($r{=}8$)"
