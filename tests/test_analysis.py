import contextlib
import itertools
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as scipy_stats

from vitpeft.analysis import aggregate, figures, stats, tables
from vitpeft.analysis.style import FAMILY_LABELS, macro_name, method_colour, method_label
from vitpeft.config import load, merged
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


# The gradient-stability curves of a run with nothing to report (vitpeft.stability).
STEADY_GRADIENTS = {
    "grad_norm_mean": [0.5, 0.4],
    "grad_norm_max": [0.9, 0.8],
    "clipped_fraction": [0.0, 0.0],
    "loss_spikes": [0, 0],
}


def fake_run(root, method, seed, acc, **extra):
    """A finished run's metrics and provenance as the train rule writes them (``extra``: more metrics)."""
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
            "train_peak_mem_mb": 700.0,
            "eval_peak_mem_mb": 800.0,
            "peak_mem_mb": 900.0,
            "train_time_s": 12.5,
            "base_bits_per_weight": 32.0,
            "epochs": 2,
            "config_hash": "0123456789abcdef",
            "data_manifest_sha256": "f" * 64,
            "curves": {"val_top1": [acc - 10, acc - 1], "train_loss": [1.0, 0.5], **STEADY_GRADIENTS},
            # the verdict on that curve by a 1-epoch window and a 10-point tolerance
            "converged": True,
            "val_top1_gain_last_window": 9.0,
            "convergence_window": 1,
            "convergence_tolerance": 10.0,
            **extra,
        },
    )
    write_json(
        run_dir / "provenance.json",
        {
            "git_commit": "abc",
            "git_dirty": False,
            "packages": {"torch": "2.14.1", "timm": "1.0.31", "peft": "0.21.2"},
            "hardware": {"cpu": "Test CPU", "hostname": "h"},
            "threads": 1,
            "device": "cpu",
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


def test_int_change_is_measured_against_the_rebuilt_model_on_the_exports_device():
    # Trained on a GPU, exported on CPU: the rebuilt model's top-1 there is not training's number.
    runs = pd.DataFrame(
        {
            "dataset": ["digits", "digits"],
            "model": ["deit_tiny", "deit_tiny"],
            "method": ["full", "full"],
            "seed": [0, 1],
            "test_top1": [80.0, 82.0],
            "test_top5": [99.0, 99.0],
            "val_top1": [79.0, 81.0],
            "export_top1_unmerged": [79.5, 82.0],
            "export_top1_int": [78.5, 81.5],
        }
    )
    cell = stats.cell_stats(runs).iloc[0]
    assert cell["int_change_mean"] == pytest.approx(-0.75)  # (78.5 - 79.5 + 81.5 - 82.0) / 2


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

    out = render_tables(study_tables, tmp_path / "paper", title="T_1 & co")
    results = (out / "results_table.tex").read_text()
    assert r"\textbf{81.0} $\pm$ 12.7" in results  # t(0.975, 1) * 1.414 / sqrt(2) = 12.7
    assert "LoRA ($r{=}8$)" in results and r"deit\_tiny" in results
    assert "75.50" in (out / "runs_table.tex").read_text()
    resources = (out / "resources_table.tex").read_text()  # training memory, not the process's peak
    assert r"Full fine-tuning & 112{,}522 & 700 & 12.5 &" in resources and "Train. mem." in resources
    macros = (out / "macros.tex").read_text()
    assert r"\newcommand{\FullDigitsDeitTinyTopOne}{81.0}" in macros
    assert r"\newcommand{\StudyTitle}{T\_1 \& co}" in macros
    assert "beats" in (out / "transfer.tex").read_text()
    quantized = (out / "quantization_table.tex").read_text()
    # full: trained 80, 82; INT-N 80, 80: mean 80.0, change 0 and -2 -> -1.0 [-13.7, 11.7]
    assert (
        r"Full fine-tuning & 32.00 & 81.0 & 80.0 (4, 16) & -1.0 {\scriptsize [-13.7, 11.7]} & 3.00 & 1.00"
        in quantized
    )
    assert r"\newcommand{\FullDigitsDeitTinyIntChange}{-1.0}" in macros
    compared = (out / "comparisons.tex").read_text()
    assert r"Full fine-tuning & Linear probe & -39.0 [-51.7, -26.3]" in compared
    assert "Rank ablation" not in compared  # one LoRA rank: no slope to fit
    assert (
        "1 0 train" not in (out / "setup.tex").read_text() and "10 train" in (out / "setup.tex").read_text()
    )
    assert r"\texttt{deit\_tiny\_patch16\_224} architecture at" in (out / "setup.tex").read_text()
    # A model built with other arguments than its architecture's says which, in words that read.
    deeper = render_tables(study_tables, tmp_path / "deeper", model_kwargs={"depth": 2, "num_heads": 1})
    assert (
        r"\texttt{deit\_tiny\_patch16\_224} architecture with \texttt{depth}~$=$~2, \texttt{num\_heads}~$=$~1 at"
        in (deeper / "setup.tex").read_text()
    )

    # Holm-corrected differences are marked: the linear probe differs from both references here.
    compared = pd.read_csv(study_tables / "comparisons.csv").set_index(["baseline", "method"])
    assert compared.loc[("full", "linear"), "p_holm"] < 0.05
    assert compared.loc[("lora_r8", "linear"), "p_holm"] < 0.05 < compared.loc[("lora_r8", "full"), "p_holm"]
    assert ("full", "lora_r8") not in compared.index  # the same pair, tested once
    caption = " ".join((out / "comparisons.tex").read_text().split())
    assert (
        r"Each pair is tested once: Full fine-tuning is compared with LoRA ($r{=}8$) in LoRA ($r{=}8$)'s family only"
        in caption
    )
    assert r"Linear probe & 1{,}930 & 2.10 & 42.0$^{\dagger\ddagger}$ $\pm$ 25.4 & 2" in results
    assert r"LoRA ($r{=}8$) & 112{,}522 & 2.10 & 72.8 $\pm$" in results  # not significant: no mark
    assert r"$^{\dagger}$: differs from Full fine-tuning" in results

    # Without more LoRA ranks or quantized bases, the ablations say so instead of a table.
    ablation = (out / "ablation_table.tex").read_text()
    assert "no rank ablation" in ablation and "no precision ablation" in ablation
    assert r"\begin{table}" not in ablation

    paths = make_all_figures(study_tables, out)
    for name in FIGURES:
        assert paths[name].read_bytes().startswith(b"%PDF-")
    assert "No AdaLoRA run in this study." in pdf_text(paths["out_adalora"])
    assert "peak memory while training" in pdf_text(paths["out_memory"])
    assert "no rank ablation" in pdf_text(paths["out_rank"])
    assert "No quantized LoRA run" in pdf_text(paths["out_stability"])
    assert "no quantized LoRA run" in paths["out_stability_sentence"].read_text()


FIGURES = (
    "out_params",
    "out_memory",
    "out_convergence",
    "out_adalora",
    "out_resources",
    "out_rank",
    "out_stability",
)


def figure_paths(out) -> dict:
    """Where every figure and the gradient-stability sentence go."""
    return {name: out / f"{name}.pdf" for name in FIGURES} | {
        "out_stability_sentence": out / "gradient_stability.tex"
    }


def run_metrics(root) -> list[str]:
    """Every run's metrics.json under ``root``, named as the run table names their folders."""
    return sorted(str(p) for p in (root / "runs").rglob("metrics.json"))


def make_all_figures(root, out):
    """Every figure from the stats in ``root``; run folders are relative to ``root`` as in a workdir."""
    paths = figure_paths(out)
    with contextlib.chdir(root):
        figures.make_figures("runs.csv", "cells.csv", "comparisons.csv", run_metrics(root), **paths)
    return paths


def test_figures_read_curves_only_from_the_given_metrics_files(study_tables, tmp_path):
    # The file is on disk, but not among the rule's inputs: the figures name the run, not read it.
    given = [p for p in run_metrics(study_tables) if "/lora_r8/" not in p or "seed1" not in p]
    paths = figure_paths(tmp_path)
    with (
        contextlib.chdir(study_tables),
        pytest.raises(ValueError, match=r"1 run\(s\) .* no metrics.json .*lora_r8/deit_tiny/seed1"),
    ):
        figures.make_figures("runs.csv", "cells.csv", "comparisons.csv", given, **paths)


def pdf_text(path) -> str:
    return subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout


def render_tables(root, out, title="T", compute=None, model_kwargs=None, recipe=None, lr_choices=()):
    """Every generated LaTeX part from the stats in ``root``, for a one-dataset, two-seed config
    (``recipe``: merged into the config)."""
    manifest = {
        "source": {"name": "digits", "split_seed": 0},
        "class_names": list("0123456789"),
        "image_shape": [8, 8, 1],
        "counts_per_class": {"train": [1] * 10, "val": [1] * 10, "test": [1] * 10},
    }
    write_json(root / "data" / "digits" / "manifest.json", manifest)
    study = {
        "title": title,
        "description": "d",
        "models": ["deit_tiny"],
        "datasets": ["digits"],
        "seeds": [0, 1],
    }
    config = {
        "study": "s",
        "studies": {"s": study},
        "models": {
            "deit_tiny": {
                "img_size": 16,
                "patch_size": 4,
                "backbone": {"source": "pretrain"},
                **({"kwargs": model_kwargs} if model_kwargs else {}),
            }
        },
        "datasets": {"digits": {"kind": "sklearn_digits"}},
        "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0.5, "grad_clip": 1.0},
        "methods": {"full": {"lr": 0.001}, "lora": {"lr": 0.005}},
        "tune": {"epochs": 1, "seed": 0, "max_extensions": 2, "grids": {"lora": [0.002, 0.005]}},
    }
    config = merged(config, recipe or {})
    choices = []
    for i, choice in enumerate(lr_choices):
        choices.append(root / "tuning" / str(i) / "choice.json")
        write_json(choices[-1], choice)
    tables.write_tables(
        root / "runs.csv",
        root / "cells.csv",
        root / "transfer.csv",
        root / "comparisons.csv",
        root / "rank.json",
        config,
        [],
        [root / "data" / "digits" / "manifest.json"],
        out,
        compute=compute,
        lr_choices=choices,
    )
    return out


def test_the_setup_states_the_estimated_compute_and_the_time_the_runs_took(study_tables, tmp_path):
    estimate = {"runs": 8, "jobs": 4, "flops": 4.0e13, "gpu_tflops": 250, "gpu_hours": 4.0e13 / 250e12 / 3600}
    out = render_tables(study_tables, tmp_path / "paper", compute=estimate)
    setup = " ".join((out / "setup.tex").read_text().split())  # lines joined, as LaTeX reads them
    assert r"8 training runs (in 4 jobs, each training every seed" in setup
    assert r"take an estimated 4\ensuremath{\times 10^{13}} FLOPs" in setup
    assert r"4.44\ensuremath{\times 10^{-5}} GPU-hours at an assumed sustained 250\,TFLOP/s" in setup
    # 8 runs of 12.5 s each: 100 s, so 0.4 TFLOP/s
    assert r"0.0278 device-hours in all, so they sustained 0.4\,TFLOP/s" in setup
    # Until every run of the estimate has reported, no sustained rate.
    partial = render_tables(study_tables, tmp_path / "partial", compute={**estimate, "runs": 9})
    assert "device-hours in all." in (partial / "setup.tex").read_text()
    # The tuning runs count: with their 20 s, the 10 runs of the estimate took 120 s.
    tuned = render_tables(
        study_tables, tmp_path / "tuned", compute={**estimate, "runs": 10}, lr_choices=[LORA_CHOICE]
    )
    assert r"0.0333 device-hours in all, so they sustained 0.333\,TFLOP/s" in flat(tuned / "setup.tex")
    # A rate the grid's extension added (30 s) counts in the hours, not in the estimate's rate.
    extension = {"lr": 0.01, "val_top1": 74.0, "epochs": 1, "train_time_s": 30.0}
    extended = {**LORA_CHOICE, "grid": [*LORA_CHOICE["grid"], extension], "extensions": [{"lr": 0.01}]}
    out = render_tables(
        study_tables, tmp_path / "ext", compute={**estimate, "runs": 10}, lr_choices=[extended]
    )
    assert r"0.0417 device-hours in all, so they sustained 0.333\,TFLOP/s" in flat(out / "setup.tex")
    # Hours from measured images/s (compute.throughput_file) where it covers a run
    measured = {**estimate, "measured_runs": 3, "measured_on": "NVIDIA H200", "throughput_file": "r.json"}
    out = render_tables(study_tables, tmp_path / "measured", compute=measured)
    assert (
        r"GPU-hours: 3 of the 8 runs at the training images/s measured for its model and method on an "
        r"NVIDIA H200 (\texttt{benchmarks/device\_check.py}, training as these runs do: the same "
        r"augmentation, regularization, weight average and batch size), the others at an assumed "
        r"sustained 250\,TFLOP/s per GPU." in flat(out / "setup.tex")
    )


LORA_CHOICE = {
    "lr": 0.005,
    "family": "lora",
    "method": "lora_r8",
    "model": "deit_tiny",
    "dataset": "digits",
    "seed": 0,
    "epochs": 1,
    "criterion": "val_top1",
    "tie_rule": "the smaller learning rate",
    "grid": [
        {"lr": 0.002, "val_top1": 70.0, "epochs": 1, "train_time_s": 10.0},
        {"lr": 0.005, "val_top1": 75.0, "epochs": 1, "train_time_s": 10.0},
    ],
    "extensions": [],
    "at_edge": None,
}


def test_the_setup_prints_each_tuning_grid_and_its_choice(study_tables, tmp_path):
    out = render_tables(study_tables, tmp_path / "paper", lr_choices=[LORA_CHOICE])
    setup = flat(out / "setup.tex")
    assert r"The peak learning rates of \texttt{lora} are chosen on the validation split" in setup
    assert r"(seed 0, 1 epoch(s)" in setup
    assert "the middle of those tied rates (the lower middle of an even count) is kept" in setup
    assert (
        r"\texttt{lora} (tuned with \texttt{lora\_r8}) on \texttt{digits}, \texttt{deit\_tiny}: "
        r"0.002~(70.0\%), \textbf{0.005}~(75.0\%)." in setup
    )
    # the untuned family keeps the config's rate, stated as such; the tuned one is not listed there
    assert "Peak learning rates set in the config: full 0.001." in setup
    untuned = flat(render_tables(study_tables, tmp_path / "untuned") / "setup.tex")
    assert "Peak learning rates set in the config: full 0.001, lora 0.005." in untuned
    assert "chosen on the validation split" not in untuned
    assert "no tuning run reads the test split" in setup
    assert "chosen on validation criteria alone" not in setup  # the study does not declare it


def test_the_setup_shows_extended_and_diverged_rates_and_a_choice_still_at_an_edge(study_tables, tmp_path):
    grid = [
        {"lr": 0.002, "val_top1": 70.0, "diverged": False},
        {"lr": 0.005, "val_top1": 75.0, "diverged": False},
        {"lr": 0.01, "val_top1": 76.0, "diverged": False},
        {"lr": 0.02, "val_top1": None, "diverged": True},
    ]
    bracketed = {
        **LORA_CHOICE,
        "lr": 0.01,
        "grid": grid,
        "extensions": [{"lr": 0.01}, {"lr": 0.02}],
        "at_edge": None,
    }
    setup = flat(render_tables(study_tables, tmp_path / "paper", lr_choices=[bracketed]) / "setup.tex")
    assert r"0.002~(70.0\%), 0.005~(75.0\%), \textbf{0.01}~(76.0\%), 0.02~(diverged)." in setup
    assert "extends the grid one step beyond it" in setup and "up to 2 time(s)" in setup
    at_edge = {**bracketed, "grid": grid[:3], "extensions": [{"lr": 0.01}], "at_edge": "highest"}
    setup = flat(render_tables(study_tables, tmp_path / "edge", lr_choices=[at_edge]) / "setup.tex")
    assert r"\textbf{0.01}~(76.0\%), still the highest rate tried." in setup


def test_a_study_designed_on_validation_says_so(study_tables, tmp_path):
    recipe = {"studies": {"s": {"designed_on_validation": True}}}
    setup = flat(render_tables(study_tables, tmp_path / "paper", recipe=recipe) / "setup.tex")
    assert "The training budget and the data split were also chosen on validation criteria alone" in setup


def test_the_setup_states_the_training_recipe(study_tables, tmp_path):
    plain = " ".join((render_tables(study_tables, tmp_path / "plain") / "setup.tex").read_text().split())
    assert "gradient clipping at norm 1.0" in plain
    assert "Mixup" not in plain and "RandAugment" not in plain and "moving average" not in plain
    recipe = {
        "datasets": {
            "digits": {
                "augment": {"randaugment": True, "randaugment_magnitude": 27, "mixup_alpha": 0.8}
                | {"cutmix_alpha": 1.0, "cutmix_switch_prob": 0.5, "erasing_prob": 0.25}
            }
        },
        "train": {"label_smoothing": 0.1, "drop_path_rate": 0.1, "grad_clip": 0.0},
        "methods": {"full": {"ema_decay": 0.99992}},
    }
    out = render_tables(study_tables, tmp_path / "recipe", recipe=recipe)
    setup = " ".join((out / "setup.tex").read_text().split())
    assert "no gradient clipping" in setup
    assert "after RandAugment (2 ops at magnitude 27 of 30)" in setup
    assert "with probability 0.25 a random box of the image is replaced by noise" in setup
    assert r"by CutMix ($\alpha = 1.0$) with probability 0.5, else by Mixup ($\alpha = 0.8$)" in setup
    assert "label smoothing 0.1, stochastic depth 0.1" in setup
    assert "full keep an exponential moving average of their weights (decay 0.99992 per step)" in setup


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
    # Each pair once: full vs lora_r8 only in lora_r8's family (full's family: linear, lora_r2).
    assert set(table.baseline) == {"lora_r8", "full"} and len(table) == 5
    linear = family[family.method == "linear"].iloc[0]
    assert linear.p_holm < 0.001 and linear.effect_dz < -3 and "wilcoxon_p" in table


def lora_rows(slopes, offsets, ranks, noise, seeds=3, rng_seed=5):
    """LoRA runs per (model, dataset) cell: ``offsets[cell] + slopes[cell] * log2(r)`` plus noise."""
    rng = np.random.default_rng(rng_seed)
    return [
        {
            "dataset": dataset,
            "model": model,
            "method": f"lora_r{r}",
            "seed": s,
            "test_top1": 50
            + offsets[(model, dataset)]
            + slopes[(model, dataset)] * np.log2(r)
            + rng.normal(0, noise),
        }
        for (model, dataset), cell_ranks in ranks.items()
        for r in cell_ranks
        for s in range(seeds)
    ]


CELLS = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]


def test_rank_ablation_compares_ranks_within_each_model_dataset_cell():
    # A model x dataset interaction (only a on x is easy) that the high ranks happen to sit in:
    # additive model and dataset effects cannot absorb it, and the slope would take it up.
    offsets = {("a", "x"): 12.0, ("a", "y"): 0.0, ("b", "x"): 0.0, ("b", "y"): 5.0}
    ranks = {("a", "x"): (16, 32), ("a", "y"): (2, 4, 8), ("b", "x"): (2, 4, 8, 16, 32), ("b", "y"): (4, 8)}
    rows = lora_rows(dict.fromkeys(CELLS, 2.0), offsets, ranks, noise=0.3)
    rows.append({"dataset": "x", "model": "a", "method": "full", "seed": 0, "test_top1": 99.0})
    result = stats.rank_ablation(pd.DataFrame(rows))
    assert result["slope"] == pytest.approx(2.0, abs=0.15) and result["ci_low"] < 2.0 < result["ci_high"]
    assert result["p_value"] < 0.001 and result["n"] == 36 and result["n_cells"] == 4


def test_rank_ablation_clusters_errors_by_cell():
    # The slope differs by cell (1 to 3, mean 2) and each cell is measured precisely: the spread
    # between cells, four of them, is what the slope is uncertain by, not the runs' own noise.
    slopes = dict(zip(CELLS, (1.0, 1.5, 2.5, 3.0), strict=True))
    ranks = dict.fromkeys(CELLS, (2, 4, 8, 16, 32))
    result = stats.rank_ablation(pd.DataFrame(lora_rows(slopes, dict.fromkeys(CELLS, 0.0), ranks, noise=0.1)))
    assert result["slope"] == pytest.approx(2.0, abs=0.05)
    # Independent-error OLS gives about +-0.2 here; the clustered interval is about +-1.5.
    assert result["ci_low"] < 1.0 and result["ci_high"] > 3.0
    assert result["cov_type"] == "cluster" and result["n_cells"] == 4 and result["df"] == 3


def test_rank_ablation_of_one_cell_uses_robust_errors_and_says_so():
    rows = lora_rows({("a", "x"): 2.0}, {("a", "x"): 0.0}, {("a", "x"): (2, 4, 8, 16)}, noise=0.5)
    result = stats.rank_ablation(pd.DataFrame(rows))
    assert (
        result["cov_type"] == "HC3" and result["n_cells"] == 1 and result["df"] == 12 - 2
    )  # 4 ranks x 3 seeds
    assert result["ci_low"] < 2.0 < result["ci_high"] and result["p_value"] < 0.001


def test_identical_paired_differences_stay_in_the_holm_family(tmp_path):
    rows = []
    for seed, base in enumerate([70.0, 71.0, 69.0]):
        accs = {
            "lora_r8": base,
            "lora_r4": base + 0.1,  # 0.1 better on every seed (float subtraction: not exactly equal)
            "lora_r2": base,  # the same on every seed
            "linear": base - 20 + seed,
            "full": base + 1 + 0.5 * seed,
        }
        rows += [
            {"dataset": "d", "model": "m", "method": m, "seed": seed, "test_top1": a} for m, a in accs.items()
        ]
    table = stats.comparisons(pd.DataFrame(rows)).set_index(["baseline", "method"])
    r4, r2 = table.loc[("lora_r8", "lora_r4")], table.loc[("lora_r8", "lora_r2")]
    assert r4.p_value == pytest.approx(0.25) and r4.p_test == "exact sign"  # 2 * 0.5**3
    assert r2.p_value == 1.0 and r2.p_test == "all zero"
    assert table.loc[("lora_r8", "linear"), "p_test"] == "paired t"
    family = table.loc["lora_r8"]
    assert family.p_holm.notna().all() and len(family) == 4
    raw = family.p_value.sort_values().to_numpy()
    holm = np.minimum(1, np.maximum.accumulate(raw * np.arange(4, 0, -1)))
    np.testing.assert_allclose(family.p_holm.sort_values(), holm)
    # The table says which test gave each p.
    text = tables.render(
        "comparisons.tex.j2", tmp_path / "c.tex", rows=table.reset_index().to_dict("records")
    )
    # ... and prints no interval of zero width where every seed gave the same difference
    assert r"LoRA ($r{=}4$) & 0.1 & 0.250$^{s}$ &" in text and "exact two-sided sign" in text
    assert r"LoRA ($r{=}2$) & 0.0 & 1.000$^{0}$ &" in text


def test_each_pair_is_tested_once_and_marks_both_references():
    rows = [
        {"dataset": "d", "model": "m", "method": method, "seed": seed, "test_top1": acc + noise}
        for seed, noise in enumerate([0.0, 0.4, -0.3, 0.2])
        for method, acc in {"lora_r8": 70.0, "full": 80.0 + seed, "linear": 40.0 - seed}.items()
    ]
    table = stats.comparisons(pd.DataFrame(rows))
    pairs = [frozenset(p) for p in zip(table.method, table.baseline, strict=True)]
    assert len(pairs) == len(set(pairs)) == 3
    full = table[(table.method == "full")].iloc[0]
    assert full.baseline == "lora_r8" and full.diff_mean > 0 and full.p_holm < 0.05
    marks = tables.significance_marks(table)
    assert marks[("d", "m", "full")] == tables.REFERENCE_MARKS["lora_r8"]
    assert marks[("d", "m", "lora_r8")] == tables.REFERENCE_MARKS["full"]  # from the same test
    assert marks[("d", "m", "linear")] == "".join(tables.REFERENCE_MARKS.values())


def test_every_method_family_has_a_label_colour_marker_and_place():
    from vitpeft.analysis import style
    from vitpeft.methods import METHODS

    for table in (style.FAMILY_COLOURS, style.FAMILY_MARKERS, style.FAMILY_LABELS):
        assert set(table) == set(METHODS)
    assert sorted(style.FAMILY_ORDER) == sorted(METHODS)
    assert style.method_label("qalora4_r8", latex=True) == "QA-LoRA 4-bit ($r{=}8$)"


MIB = 2**20
RICH_STUDY = {  # per method: test top-1 per seed, and the metrics only that method records
    "full": ([80.0, 82.0, 81.0], {}),
    "linear": ([40.0, 44.0, 42.0], {}),
    "lora_r2": ([60.0, 61.5, 60.2], {}),
    "lora_r4": ([66.0, 68.0, 67.5], {}),
    "lora_r8": ([70.0, 71.0, 70.5], {}),
    "lora_r16": ([71.0, 73.0, 71.5], {}),
    "qlora8_r8": (
        [69.0, 71.5, 70.0],
        {"base_linear_bytes_fp32": 4 * MIB, "base_linear_bytes_quantized": MIB, "base_bits_per_weight": 8.0},
    ),
    "qlora4_r8": (
        [67.0, 69.0, 68.5],
        {
            "base_linear_bytes_fp32": 4 * MIB,
            "base_linear_bytes_quantized": MIB / 2,
            "base_bits_per_weight": 4.0,
        },
    ),
    "qalora4_r8": (
        [68.0, 69.5, 69.0],
        {
            "base_linear_bytes_fp32": 4 * MIB,
            "base_linear_bytes_quantized": 0.75 * MIB,
            "base_bits_per_weight": 6.0,
        },
    ),
    "adalora_r8": ([69.5, 70.5, 70.0], {}),
}


# Per method and seed, the gradient-stability curves that differ from a steady run's: the 4-bit
# bases' gradients are larger and clipped more often, and one QLoRA 4-bit run's loss spikes twice.
QUANTIZED_GRADIENTS = {
    "qlora4_r8": lambda seed: {
        "grad_norm_mean": [1.5, 1.0 + seed],
        "grad_norm_max": [4.0, 2.0 + seed],
        "clipped_fraction": [0.5, 0.25],
        "loss_spikes": [0, 2 if seed == 1 else 0],
    },
    "qalora4_r8": lambda seed: {"grad_norm_mean": [0.75, 0.75], "clipped_fraction": [0.125, 0.0]},
}


def adalora_records(seed):
    """One epoch record per epoch, the last holding the final ranks (block 0's qkv: 12, 10, 8)."""
    final = {
        "blocks.0.attn.qkv": 12 - 2 * seed,
        "blocks.0.attn.proj": 6,
        "blocks.1.attn.qkv": 9,
        "blocks.1.attn.proj": 5,
    }
    return [{"adalora_ranks": {name: 12 for name in final}}, {"adalora_ranks": final}]


@pytest.fixture
def rich_study(tmp_path):
    """A three-seed study with every optional method: LoRA ranks, quantized bases and AdaLoRA."""
    cells = []
    for method, (accs, extra) in RICH_STUDY.items():
        paths = []
        for seed, acc in enumerate(accs):
            curves = {"val_top1": [acc - 10, acc - 1], "train_loss": [1.0, 0.5], **STEADY_GRADIENTS}
            curves |= QUANTIZED_GRADIENTS.get(method, lambda seed: {})(seed)
            if method.startswith("adalora"):
                curves["records"] = adalora_records(seed)
            paths.append(fake_run(tmp_path, method, seed, acc, curves=curves, **extra))
        cells.append(tmp_path / f"{method}_digits" / "summary.csv")
        aggregate.summarize_cell(paths, cells[-1])
    aggregate.aggregate(cells, tmp_path / "runs.csv")
    stats.write_stats(
        *(tmp_path / n for n in ("runs.csv", "cells.csv", "transfer.csv", "comparisons.csv", "rank.json"))
    )
    return tmp_path


def table_line(text, start):
    return next(line.strip() for line in text.splitlines() if line.strip().startswith(start))


def test_ablation_tables_with_every_optional_method(rich_study, tmp_path):
    out = render_tables(rich_study, tmp_path / "paper")
    ablation = (out / "ablation_table.tex").read_text()
    runs = pd.read_csv(rich_study / "runs.csv")
    compared = pd.read_csv(rich_study / "comparisons.csv").set_index(["baseline", "method"])

    r2 = stats.paired_difference(runs, "lora_r2", "lora_r8").iloc[0]
    p_holm = compared.loc[("lora_r8", "lora_r2"), "p_holm"]
    assert p_holm < 0.05
    assert table_line(ablation, "2 &") == (
        rf"2 & 112{{,}}522 & 60.6 $\pm$ {tables.ci_half(pd.read_csv(rich_study / 'cells.csv').set_index('method').loc['lora_r2']):.1f}"
        rf" & {r2.diff_mean:.1f} [{r2.diff_ci_low:.1f}, {r2.diff_ci_high:.1f}] & {p_holm:.3f} \\"
    )
    assert table_line(ablation, "8 &").endswith(r"& reference & -- \\")
    assert [table_line(ablation, f"{r} &")[0] for r in (2, 4, 8, 16)] == ["2", "4", "8", "1"]
    slope = read_json(rich_study / "rank.json")["slope"]
    assert f"{slope:.2f} points per doubling of the rank" in " ".join(ablation.split())
    assert (
        "heteroscedasticity-robust (HC3) standard errors, since one model on one dataset is a single cluster"
        in (" ".join(ablation.split()))
    )
    assert read_json(rich_study / "rank.json")["cov_type"] == "HC3"

    # The bits ablation: the same r=8 adapter over fp32, 8-bit, 4-bit NF4 and INT-4 group-wise bases.
    assert table_line(ablation, r"LoRA ($r{=}8$) &").startswith(r"LoRA ($r{=}8$) & 4.00 & 70.5 $\pm$")
    q4 = stats.paired_difference(runs, "qlora4_r8", "lora_r8").iloc[0]
    assert table_line(ablation, "QLoRA 4-bit").startswith(
        rf"QLoRA 4-bit ($r{{=}}8$) & 0.50 & 68.2 $\pm$ 2.6 & {q4.diff_mean:.1f} [{q4.diff_ci_low:.1f}, "
    )
    assert table_line(ablation, "QLoRA 8-bit").startswith(r"QLoRA 8-bit ($r{=}8$) & 1.00 &")
    assert table_line(ablation, "QA-LoRA 4-bit").startswith(r"QA-LoRA 4-bit ($r{=}8$) & 0.75 &")
    assert "AdaLoRA" not in ablation  # its rank is allocated, not set: it is in neither ablation

    # The resources table: each base's stored bytes and bits per weight, 32 for an fp32 base.
    resources = (out / "resources_table.tex").read_text()
    assert "& 0.75 of 4.00 & 6.00 &" in table_line(resources, "QA-LoRA 4-bit")
    assert "& 1.00 of 4.00 & 8.00 &" in table_line(resources, "QLoRA 8-bit")
    assert "& -- & 32.00 & --" in table_line(resources, r"LoRA ($r{=}8$) &")

    paths = make_all_figures(rich_study, tmp_path / "figures")
    for name in FIGURES:
        assert paths[name].read_bytes().startswith(b"%PDF-")
    heatmap = pdf_text(paths["out_adalora"])
    assert "AdaLoRA r=8" in heatmap and "10" in heatmap.split()  # block 0 qkv: mean of 12, 10, 8
    assert "attn.qkv" in heatmap and "attn.proj" in heatmap
    assert "*" in pdf_text(paths["out_rank"])  # r=2 differs from r=8 after Holm correction


def test_pareto_front_keeps_only_points_nothing_cheaper_beats():
    cost = [1.0, 2.0, 3.0, 4.0, math.nan, 3.0]
    accuracy = [50.0, 40.0, 60.0, 60.0, 99.0, 55.0]
    assert figures.pareto_front(cost, accuracy).tolist() == [0, 2]  # 4.0 costs more for no gain
    assert figures.pareto_front([1.0, 1.0], [50.0, 55.0]).tolist() == [1]


def test_only_what_varies_within_a_family_labels_its_points():
    methods = ["full", "lora_r2", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]
    varying = figures.varying_fields(methods)
    assert varying["lora"] == {"r"} and varying["qlora"] == {"bits"} and varying["adalora"] == set()
    assert figures.varying_fields(["lora_r8", "qlora4_r8", "qlora4_r16"])["qlora"] == {"r"}
    assert figures.variant_label("qlora4_r16", {"bits", "r"}) == "4-bit r=16"
    assert figures.variant_label("adalora_r8", set()) == ""
    cells = pd.DataFrame(
        {
            "dataset": "d",
            "model": "m",
            "method": methods,
            "trainable_params": [1e6, 1e4, 4e4, 4e4, 4e4, 6e4, 3e4],
            "test_top1_mean": [50.0, 40, 45, 44, 43, 42, 41],
            "test_top1_ci_low": [49.0, 39, 44, 43, 42, 41, 40],
            "test_top1_ci_high": [51.0, 41, 46, 45, 44, 43, 42],
        }
    )
    fig = figures.accuracy_vs_params(cells, None)
    # one legend entry per family; LoRA's and QLoRA's points told apart by rank and by bits
    assert sorted(text.get_text() for text in fig.axes[0].texts) == ["4-bit", "8-bit", "r=2", "r=8"]


def test_rank_grid_averages_final_ranks_over_seeds_per_block_and_module():
    finals = [figures.final_ranks(adalora_records(seed)) for seed in range(3)]
    grid = figures.rank_grid(finals)
    assert grid.index.tolist() == [0, 1] and grid.columns.tolist() == ["attn.proj", "attn.qkv"]
    assert grid.loc[0, "attn.qkv"] == 10.0 and grid.loc[1, "attn.proj"] == 5.0
    with pytest.raises(ValueError, match="'head' is not inside a transformer block"):
        figures.rank_grid([{"head": 3}])


# The classical baselines and the convergence criterion in the paper and its figures.
BASELINE_TOP1 = {"logreg": 96.7, "svc": 98.3, "knn": 45.0}


def fake_baselines(root, dataset="digits", top1=BASELINE_TOP1):
    """Baseline records as the baseline rule writes them (the fields the analysis reads)."""
    labels = {"logreg": "Logistic regression", "svc": "RBF SVM", "knn": "$k$-nearest neighbours"}
    params = {
        "logreg": {"C": 1.0, "max_iter": 1000},
        "svc": {"C": 1.0, "gamma": "scale"},
        "knn": {"n_neighbors": 3},
    }
    paths = []
    for name, acc in top1.items():
        path = root / "baselines" / dataset / f"{name}.json"
        write_json(
            path,
            {
                "baseline": name,
                "label": labels[name],
                "dataset": dataset,
                "test_top1": acc,
                "val_top1": acc - 0.5,
                "fit_time_s": 0.25,
                "hyperparameters": params[name],
                "candidates": [{"params": params[name], "val_top1": acc - 0.5, "fit_time_s": 0.25}],
                "train_images": 1077 if name != "svc" else 500,
                "train_images_available": 1077,
                "subsampled": name == "svc",
            },
        )
        paths.append(path)
    return paths


def render_with_baselines(root, out):
    from vitpeft.analysis import tables

    write_json(
        root / "data" / "digits" / "manifest.json",
        {
            "source": {"name": "digits", "split_seed": 0},
            "class_names": list("0123456789"),
            "image_shape": [8, 8, 1],
            "counts_per_class": {"train": [1] * 10, "val": [1] * 10, "test": [1] * 10},
        },
    )
    config = {
        "study": "s",
        "studies": {
            "s": {
                "title": "T",
                "description": "d",
                "models": ["deit_tiny"],
                "datasets": ["digits"],
                "seeds": [0, 1],
            }
        },
        "models": {"deit_tiny": {"img_size": 16, "patch_size": 4, "backbone": {"source": "pretrain"}}},
        "datasets": {"digits": {"kind": "sklearn_digits"}},
        "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0.5, "grad_clip": 1.0},
        "methods": {"full": {"lr": 0.001}},
        "convergence": {"window": 1, "tolerance": 10.0},
    }
    tables.write_tables(
        *(root / n for n in ("runs.csv", "cells.csv", "transfer.csv", "comparisons.csv", "rank.json")),
        config,
        [],
        [root / "data" / "digits" / "manifest.json"],
        out,
        baselines=fake_baselines(root),
    )
    return out


def flat(path):
    return " ".join(path.read_text().split())


def test_the_setup_names_the_device_the_runs_trained_on(study_tables, tmp_path):
    setup = flat(render_tables(study_tables, tmp_path / "paper") / "setup.tex")
    assert r"\paragraph{Hardware.} Test CPU, 1 thread(s) per job, training on the CPU." in setup


def test_baselines_are_reference_rows_and_the_text_places_the_methods_beside_them(study_tables, tmp_path):
    out = render_with_baselines(study_tables, tmp_path / "paper")
    results = flat(out / "results_table.tex")
    assert r"\textit{Not a ViT: classical classifiers on raw pixels (reference)}" in results
    assert (
        r"RBF SVM & -- & -- & 98.3 & -- \\" in results
        and r"Logistic regression & -- & -- & 96.7 & -- \\" in results
    )
    assert r"\textbf{81.0}" in results and r"\textbf{98.3}" not in results  # bold: the best ViT method
    # the reference rows come after every method of the block
    assert results.index("Not a ViT") > results.index("LoRA ($r{=}8$)")

    text = flat(out / "baselines.tex")
    assert (
        "the classical classifiers on raw pixels reach Logistic regression 96.7\\%, RBF SVM 98.3\\%, $k$-nearest neighbours 45.0\\%"
        in text
    )
    assert (
        "The best ViT method, Full fine-tuning, reaches 81.0\\%, 17.3 points below the best of them (RBF SVM)."
        in text
    )
    assert "No ViT method beats the best baseline." in text
    assert (
        "Between the weakest ($k$-nearest neighbours) and the best baseline: Full fine-tuning, LoRA ($r{=}8$), From scratch (full)."
        in text
    )
    assert "Below even the weakest baseline ($k$-nearest neighbours): Linear probe." in text

    macros = flat(out / "macros.tex")
    assert r"\newcommand{\BaselineSvcDigitsTopOne}{98.3}" in macros
    assert r"\newcommand{\BaselineKnnDigitsTopOne}{45.0}" in macros
    assert r"\newcommand{\RunsConverged}{8}" in macros and r"\newcommand{\RunsTotal}{8}" in macros

    setup = flat(out / "setup.tex")
    assert "\\paragraph{Classical references.}" in setup
    assert (
        "RBF SVM on \\texttt{digits} with C = 1.0, gamma = scale (of 1 candidate(s)), fit on 500 of the 1{,}077 training images (a stratified subsample"
        in setup
    )
    assert (
        "$k$-nearest neighbours on \\texttt{digits} with n\\_neighbors = 3 (of 1 candidate(s)), fit on 1{,}077 training images"
        in setup
    )
    assert (
        "A run counts as converged if it trained at least 2 epochs and the mean validation top-1 of its last 1 epoch(s) is at most 10.0 points above the mean of the 1 before them"
        in setup
    )


def test_without_baselines_the_text_says_so(study_tables, tmp_path):
    out = render_tables(study_tables, tmp_path / "paper")
    assert "No classical baseline was fit for this study." in flat(out / "baselines.tex")
    assert "Not a ViT" not in flat(out / "results_table.tex")


def text_boxes(fig):
    """Every piece of text on the figure, with its box on the canvas: labels and reference labels,
    tick labels, axis labels, titles and the legend."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    texts = [*fig.legends[0].get_texts()] if fig.legends else []
    for ax in fig.axes:
        texts += [*ax.texts, ax.xaxis.label, ax.yaxis.label, ax.title]
        texts += [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_visible() and t.get_text()]
    return [(t, t.get_window_extent(renderer)) for t in texts]


@pytest.mark.parametrize("panel", [figures.accuracy_vs_params, figures.accuracy_vs_memory])
def test_figure_one_has_one_legend_entry_per_family_rank_lines_and_no_overlapping_labels(rich_study, panel):
    cells = pd.read_csv(rich_study / "cells.csv")
    # the baselines lie 0.3 points apart, on top of LoRA r=8 (70.5) and QLoRA 8-bit (70.2)
    close = aggregate.baselines_table(
        fake_baselines(rich_study, top1={"logreg": 70.3, "svc": 70.6, "knn": 70.9})
    )
    # and a second panel (another dataset) beside the first, with its own baselines
    cells = pd.concat([cells, cells.assign(dataset="emnist", test_top1_mean=cells.test_top1_mean - 20)])
    spread = aggregate.baselines_table(
        fake_baselines(rich_study, "emnist", {"logreg": 30.0, "svc": 45.0, "knn": 40.0})
    )
    fig = panel(cells, None, pd.concat([close, spread]))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    families = ["full", "linear", "lora", "qlora", "adalora", "qalora"]
    assert legend == [FAMILY_LABELS[f] for f in families] + ["Pareto frontier"]
    ax = fig.axes[0]  # digits (panels in dataset order)
    texts = sorted(t.get_text() for t in ax.texts)
    # LoRA's four ranks and QLoRA's two bases are labelled; the baselines, at the right, with their accuracy
    assert texts == sorted(
        [
            *("r=2", "r=4", "r=8", "r=16", "8-bit", "4-bit"),
            *("Logistic regression 70.3", "RBF SVM 70.6", "$k$-nearest neighbours 70.9"),
        ]
    )
    # one line through LoRA's four ranks
    lora = cells[cells.method.str.startswith("lora_r") & (cells.dataset == "digits")]
    assert len([line for line in ax.get_lines() if len(line.get_xdata()) == len(lora)]) == 1
    # three grey reference lines across the panel, at the baselines' accuracies
    flat_lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]]
    assert sorted(line.get_ydata()[0] for line in flat_lines) == [70.3, 70.6, 70.9]
    # the labels keep the lines' order, bottom to top
    heights = {t.get_text(): box.y0 for t, box in text_boxes(fig) if t in ax.texts}
    assert (
        heights["Logistic regression 70.3"] < heights["RBF SVM 70.6"] < heights["$k$-nearest neighbours 70.9"]
    )
    ours = {id(t) for a in fig.axes for t in a.texts}
    for (a, box_a), (b, box_b) in itertools.combinations(text_boxes(fig), 2):
        if id(a) in ours or id(b) in ours:  # matplotlib's own ticks include some outside the view
            assert not box_a.overlaps(box_b), (a.get_text(), b.get_text())


def test_convergence_figure_shades_the_window_marks_unconverged_runs_on_integer_epochs(rich_study):
    runs = pd.read_csv(rich_study / "runs.csv")
    runs.loc[(runs.method == "full") & (runs.seed == 1), "converged"] = False
    curves = {d: {"val_top1": [50.0, 60.0, 70.0, 71.0, 71.5, 71.6, 71.5]} for d in runs.run_dir}
    runs["convergence_window"] = 3
    fig = figures.convergence(runs, curves, None)
    ax = fig.axes[0]
    spans = sorted(
        (p.get_x(), p.get_x() + p.get_width(), p.get_label()) for p in ax.patches if p.get_width() < 10
    )
    # the window before (epochs 2-4) and the last window (epochs 5-7), whose means are compared
    assert [(a, b) for a, b, _ in spans] == [(1.5, 4.5), (4.5, 7)]
    assert spans[1][2] == "convergence windows (3 epochs each)" and "convergence" not in spans[0][2]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [(list(c.get_xdata()), list(c.get_ydata())) for c in crosses] == [([7], [71.5])]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    legend = ax.get_legend()
    assert "not converged" in [t.get_text() for t in legend.get_texts()]
    assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # right of the axes, off the data


def test_the_figures_rule_draws_the_baselines_from_their_records(rich_study, tmp_path):
    paths = make_all_figures(rich_study, tmp_path / "figures")
    assert "RBF SVM" not in pdf_text(paths["out_params"])  # none given
    fake_baselines(rich_study)
    paths = figure_paths(tmp_path / "with")
    records = sorted((rich_study / "baselines" / "digits").glob("*.json"))
    with contextlib.chdir(rich_study):
        figures.make_figures(
            "runs.csv", "cells.csv", "comparisons.csv", run_metrics(rich_study), **paths, baselines=records
        )
    assert "RBF SVM 98.3" in pdf_text(paths["out_params"]) and "RBF SVM 98.3" in pdf_text(paths["out_memory"])


def test_gradient_stability_compares_lora_with_its_quantized_variants_at_their_rank(rich_study, tmp_path):
    paths = make_all_figures(rich_study, tmp_path / "figures")
    drawn = pdf_text(paths["out_stability"])
    for label in ("LoRA r=8", "QLoRA 8-bit r=8", "QLoRA 4-bit r=8", "QA-LoRA 4-bit r=8", "steps clipped"):
        assert label in drawn
    assert "r=16" not in drawn and "Full" not in drawn and "AdaLoRA" not in drawn
    sentence = " ".join(paths["out_stability_sentence"].read_text().split())
    # qlora4_r8: epochs 1.5 and 1, 2, 3 (seeds) -> mean 1.75; clipped 50% and 25% -> 37.5%
    assert (
        r"averaged 0.45 with LoRA ($r{=}8$), 0.45 with QLoRA 8-bit ($r{=}8$), 1.75 with QLoRA 4-bit "
        r"($r{=}8$) and 0.75 with QA-LoRA 4-bit ($r{=}8$);" in sentence
    )
    assert r"clipping scaled down 0.0\%, 0.0\%, 37.5\% and 6.2\% of their steps" in sentence
    assert (
        r"exceeded 3 times the median of the 16 steps before it, and that median by 0.1~$\ln C$ or more, for $C$ classes) 0, 0, 2 and 0 times"
        in sentence
    )
    assert "in 0 of 3, 0 of 3, 1 of 3 and 0 of 3 runs." in sentence


def test_the_transfer_check_compares_on_its_own_seeds_and_nothing_else_does(tmp_path):
    """Full fine-tuning and scratch train seeds 2 and 3 for the transfer check alone: the check
    pairs all four seeds, while the cells and the comparisons keep the study's two."""
    study = {"full": [80.0, 82.0], "scratch": [79.0, 80.0], "lora_r8": [78.0, 79.0]}
    extra = {"full": [81.0, 83.0], "scratch": [80.0, 80.5]}
    runs = [fake_run(tmp_path, m, s, a) for m, accs in study.items() for s, a in enumerate(accs)]
    aggregate.write_csv(aggregate.runs_table(runs), tmp_path / "runs.csv")
    transfer_runs = [
        *[p for p in runs if "lora" not in str(p)],
        *[fake_run(tmp_path, m, s, a) for m, accs in extra.items() for s, a in enumerate(accs, start=2)],
    ]
    aggregate.write_runs_table(transfer_runs, tmp_path / "transfer_runs.csv")
    out = [tmp_path / name for name in ("cells.csv", "transfer.csv", "comparisons.csv", "rank.json")]
    stats.write_stats(tmp_path / "runs.csv", *out, transfer_runs_csv=tmp_path / "transfer_runs.csv")
    (transfer,) = pd.read_csv(out[1]).to_dict("records")
    assert transfer["diff_n"] == 4 and transfer["diff_mean"] == pytest.approx((1 + 2 + 1 + 2.5) / 4)
    cells = pd.read_csv(out[0]).set_index("method")
    assert cells.loc["full", "n_seeds"] == 2 and cells.loc["full", "test_top1_mean"] == pytest.approx(81.0)
    full_vs_lora = pd.read_csv(out[2]).query("method == 'full' and baseline == 'lora_r8'").iloc[0]
    assert full_vs_lora["diff_n"] == 2
    # a study without the check (or a partial one before its first run) has no transfer runs
    aggregate.write_runs_table([], tmp_path / "none.csv")
    stats.write_stats(tmp_path / "runs.csv", *out, transfer_runs_csv=tmp_path / "none.csv")
    assert pd.read_csv(out[1]).empty


def test_without_clipping_the_stability_figure_and_sentence_say_nothing_of_clipped_steps(
    rich_study, tmp_path
):
    # The full study trains with grad_clip 0: no clipped steps exist, so none are reported.
    runs = pd.read_csv(rich_study / "runs.csv").assign(grad_clip=0.0)
    runs.to_csv(rich_study / "runs.csv", index=False)
    paths = make_all_figures(rich_study, tmp_path / "figures")
    drawn = pdf_text(paths["out_stability"])
    assert "steps clipped" not in drawn and "loss spikes" in drawn and "global gradient norm" in drawn
    text = " ".join(paths["out_stability_sentence"].read_text().split())
    assert "clipping scaled down" not in text and "before clipping" not in text
    assert "training used no gradient clipping; and a step's loss spiked" in text
    assert "Training used no gradient clipping, so no panel counts clipped steps. Right:" in text
    assert "Middle:" not in text

    # Clipping at norm 1.0: the panel, the threshold and the clipped shares are back.
    runs.assign(grad_clip=1.0).to_csv(rich_study / "runs.csv", index=False)
    paths = make_all_figures(rich_study, tmp_path / "clipped")
    assert "steps clipped" in pdf_text(paths["out_stability"])
    text = " ".join(paths["out_stability_sentence"].read_text().split())
    assert r"clipping (norm 1) scaled down 0.0\%, 0.0\%, 37.5\% and 6.2\% of their steps" in text
    assert "Middle: the share of steps whose norm exceeded the clipping threshold (norm 1). Right:" in text


def test_the_quantization_caption_states_the_measured_qalora_merge_gap(tmp_path):
    runs = pd.DataFrame(
        {
            "method": ["qalora4_r8", "qalora4_r8", "lora_r8"],
            "export_int_vs_unmerged_max_rel": [3e-4, 5.1e-4, 0.02],  # LoRA's is the naive route's loss
        }
    )
    assert tables.qalora_merge_gap(runs) == 5.1e-4
    row = {
        "method": "qalora4_r8",
        "base_bits_per_weight": 6.0,
        "test_top1_mean": 80.0,
        "export_top1_int_mean": 79.0,
        "export_int_bits": 4,
        "export_int_group_size": 16,
        "int_change_mean": -1.0,
        "int_change_ci_low": -1.0,  # every seed lost one point: an interval without width
        "int_change_ci_high": -1.0,
        "export_onnx_bytes": 2**20,
        "export_int_onnx_bytes": 2**18,
    }
    groups = [{"dataset": "digits", "model": "vit", "rows": [row]}]
    text = " ".join(
        tables.render(
            "quantization_table.tex.j2",
            tmp_path / "q.tex",
            groups=groups,
            merge_gap=tables.qalora_merge_gap(runs),
        ).split()
    )
    assert "merges exactly" not in text
    assert "exact up to one fp16 rounding of each shifted zero" in text
    assert "by at most 0.00051 of the largest logit" in text
    assert r"& -1.0 & 1.00 & 0.25 \\" in text  # no [-1.0, -1.0]


def test_the_memory_caption_says_what_the_runs_device_measured(study_tables, tmp_path):
    runs = pd.read_csv(study_tables / "runs.csv")
    on_cpu = tables.memory_measure(runs.assign(device="cpu"))
    assert "resident set size of the whole training process" in on_cpu and "CUDA" not in on_cpu
    on_gpu = tables.memory_measure(runs.assign(device="cuda:0"))
    assert on_gpu == "on a CUDA GPU, the peak memory allocated to PyTorch's tensors"
    mixed = tables.memory_measure(runs.assign(device=["cpu", "cuda"] * (len(runs) // 2)))
    assert mixed == f"{on_gpu}; {on_cpu}"
    runs.assign(device="cpu").to_csv(study_tables / "runs.csv", index=False)
    macros = (render_tables(study_tables, tmp_path / "paper") / "macros.tex").read_text()
    assert rf"\newcommand{{\TrainingMemoryMeasure}}{{{on_cpu}}}" in macros


@pytest.mark.parametrize("study", ["demo", "full"])
def test_the_limitations_are_written_from_the_selected_study(study, tmp_path):
    repo = Path(__file__).resolve().parent.parent
    config = load({**yaml.safe_load((repo / "config.yaml").read_text()), "study": study})
    text = " ".join(
        tables.render("limitations.tex.j2", tmp_path / "l.tex", **tables.limitations(config)).split()
    )
    if study == "demo":
        assert (
            "The demo study is deliberately small: 8~px inputs, a backbone pretrained here (on glyphs)"
            in text
        )
        assert "and 5 seeds per method" in text and "no $p$ below 0.0625" in text
    else:
        assert "demo" not in text and "deliberately small" not in text
        assert (
            "The full study fine-tunes deit\\_tiny, deit\\_small, vit\\_small from pretrained weights at 224~px"
            in text
        )
        assert "With 3 seeds" in text and "no $p$ below 0.25 before any correction" in text


def test_the_supplement_draws_adalora_ranks_epoch_by_epoch(rich_study, tmp_path):
    from vitpeft.analysis import seed_curves

    runs = pd.read_csv(rich_study / "runs.csv")
    with contextlib.chdir(rich_study):
        curves = figures.run_curves(runs, run_metrics(rich_study))
    adalora = runs[runs.method == "adalora_r8"].sort_values("seed")
    ranks = seed_curves.rank_epochs(curves[adalora.run_dir.iloc[1]]["records"])
    # Seed 1: every layer at 12 after epoch 1; block 0's qkv at 10 after epoch 2.
    assert list(ranks.index) == [1, 2] and ranks.loc[1].tolist() == [12.0] * 4
    assert ranks.loc[2, (0, "attn.qkv")] == 10 and ranks.loc[2, (1, "attn.proj")] == 5
    fig = seed_curves.adalora_rank_epochs(runs, curves, None)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in drawn] == ["attn.proj", "attn.qkv"]
    qkv = drawn[1]
    block0 = next(line for line in qkv.lines if line.get_label() == "block 0")
    assert list(block0.get_ydata()) == [12.0, 10.0]  # seeds 0, 1, 2 end at 12, 10, 8: mean 10
    everything = next(line for line in qkv.lines if line.get_label() == "all layers")
    assert list(everything.get_ydata()) == [12.0, (10 + 6 + 9 + 5) / 4]

    out = tmp_path / "epochs.pdf"
    with contextlib.chdir(rich_study):
        seed_curves.make_seed_curves("runs.csv", run_metrics(rich_study), {}, out_adalora_epochs=out)
    assert "block 1" in pdf_text(out) and "AdaLoRA" in pdf_text(out)

    no_adalora = runs[runs.method != "adalora_r8"]
    seed_curves.adalora_rank_epochs(no_adalora, curves, tmp_path / "none.pdf")
    assert "No AdaLoRA run" in pdf_text(tmp_path / "none.pdf")


def test_the_comparisons_table_prints_no_interval_without_width(tmp_path):
    # Every seed gave -1.0: the interval is [-1.0, -1.0], which says nothing the mean does not.
    row = {
        "dataset": "digits",
        "model": "vit",
        "baseline": "full",
        "method": "lora_r8",
        "diff_mean": -1.0,
        "diff_ci_low": -1.0,
        "diff_ci_high": -1.0,
        "p_value": 0.25,
        "p_test": "exact sign",
        "p_holm": 0.25,
        "effect_dz": math.nan,
    }
    text = tables.render("comparisons.tex.j2", tmp_path / "c.tex", rows=[row])
    assert r"& -1.0 & 0.250$^{s}$ & 0.250 &" in text and "[-1.0, -1.0]" not in text


def test_the_transfer_sentence_prints_no_interval_where_every_seed_gave_the_same_difference(tmp_path):
    row = {
        "dataset": "digits",
        "model": "deit_tiny",
        "diff_mean": 1.0,
        "diff_n": 3,
        "diff_ci_low": 1.0,
        "diff_ci_high": 1.0,
        "p_value": 0.25,
        "p_test": "exact sign",
    }
    text = " ".join(tables.render("transfer.tex.j2", tmp_path / "t.tex", transfer=[row]).split())
    assert "CI 1.0 to 1.0" not in text
    assert (
        "the same difference on every seed, so no interval; an exact sign test gives $p = 0.250$, the smallest 3 seeds allow"
        in text
    )
    varied = {**row, "diff_ci_low": 0.4, "diff_ci_high": 1.6, "p_value": 0.01, "p_test": "paired t"}
    text = " ".join(tables.render("transfer.tex.j2", tmp_path / "t.tex", transfer=[varied]).split())
    assert "(95\\% CI 0.4 to 1.6; paired $t$-test $p = 0.010$)" in text
