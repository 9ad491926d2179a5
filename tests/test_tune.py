"""The tune stage: families, grids, the choice, and what a grid change reruns (vitpeft.tune)."""

import copy
import json
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO, TINY_CONFIG, snakemake_command

from vitpeft import compute, tune
from vitpeft import config as study_config
from vitpeft.config import ConfigError


@pytest.mark.parametrize(
    ("method", "family"),
    [
        ("lora_r4", "lora"),
        ("lora_r16", "lora"),
        ("qlora8_r8", "qlora"),
        ("qlora4_r8", "qlora"),
        ("adalora_r8", "adalora"),
        ("qalora4_r8", "qalora"),  # its own rate, not LoRA's
        ("full", "full"),
        ("scratch", "full"),  # the transfer check compares at the same rate
        ("linear", "linear"),
    ],
)
def test_each_method_trains_at_its_familys_rate(method, family, demo_config):
    config = copy.deepcopy(demo_config)
    config["tune"]["grids"].pop("scratch", None)
    assert tune.tuning_family(method, config) == family


def test_scratch_with_a_grid_of_its_own_is_tuned_on_it(demo_config):
    config = copy.deepcopy(demo_config)
    config["tune"]["grids"]["scratch"] = [1.0e-3, 2.0e-3]
    assert tune.tuning_family("scratch", config) == "scratch"
    assert (
        "scratch" in tune.study_families(config)
        and tune.representative_method(config, "scratch") == "scratch"
    )
    (run, _) = tune.tuning_runs(config, "vit_w64_d4", "digits", "scratch")
    assert run.method.name == "scratch" and not run.method.uses_pretrained_backbone


def test_a_family_is_tuned_with_the_middle_of_its_study_methods(demo_config):
    config = copy.deepcopy(demo_config)
    assert tune.representative_method(config, "lora") == "lora_r8"  # of r4, r8, r16
    assert tune.representative_method(config, "qlora") == "qlora4_r8"  # the lower middle of 4, 8 bits
    config["studies"]["demo"]["methods"] = ["lora_r16", "lora_r2", "lora_r32", "lora_r4"]
    assert tune.representative_method(config, "lora") == "lora_r4"


def test_the_choice_is_the_best_validation_top1_and_a_tie_goes_to_the_smaller_rate():
    grid = [{"lr": 0.01, "val_top1": 96.5}, {"lr": 0.002, "val_top1": 96.5}, {"lr": 0.005, "val_top1": 96.0}]
    assert tune.choose(grid)["lr"] == 0.002
    grid[2]["val_top1"] = 97.0
    assert tune.choose(grid)["lr"] == 0.005


def test_the_short_runs_are_the_studys_run_at_each_rate_with_the_tuning_budget(demo_config):
    runs = tune.tuning_runs(demo_config, "vit_w64_d4", "digits", "lora")
    study_run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "lora_r8", 0)
    assert [run.method.lr for run in runs] == demo_config["tune"]["grids"]["lora"]
    for run in runs:
        assert run.seed == demo_config["tune"]["seed"] == 0
        assert run.train.epochs == demo_config["tune"]["epochs"] < study_run.train.epochs
        assert run.method.name == "lora_r8" and run.augment == study_run.augment
        assert run.train.batch_size == study_run.train.batch_size


def test_a_short_run_keeps_the_schedules_shape_and_validates_its_raw_weights(demo_config):
    """The full study: 10 of 100 epochs warm up, and every family but AdaLoRA keeps a weight EMA of
    decay 0.99992 (some 12,500 steps). A 10-epoch tuning run warms up for 1 epoch, and ranks the
    rates by its own weights, not by an average still mostly made of the initial ones."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    full = study_config.load({**raw, "study": "full"})
    study_run = study_config.resolve_run(full, "deit_small", "cifar10", "full", 0)
    assert study_run.method.ema_decay > 0 and study_run.train.warmup_epochs == 10
    (run, *_) = tune.tuning_runs(full, "deit_small", "cifar10", "full")
    assert run.train.epochs == full["tune"]["epochs"]
    assert run.train.warmup_epochs == pytest.approx(10 * run.train.epochs / study_run.train.epochs)
    assert run.method.ema_decay == 0.0


def test_the_study_estimate_counts_the_tuning_runs(demo_config):
    estimate = compute.estimate_study(demo_config)
    tuning = [run for job in compute.tuning_jobs(demo_config) for run in job]
    assert estimate.tuning_runs == len(tuning) == 7 * 3  # 7 families x 3 rates, one model and dataset
    assert estimate.tuning_flops == pytest.approx(
        sum(compute.estimated_flops(demo_config, r) for r in tuning)
    )
    untuned = copy.deepcopy(demo_config)
    del untuned["tune"]
    without = compute.estimate_study(untuned)
    assert estimate.runs == without.runs + 21 and estimate.jobs == without.jobs + 7
    assert estimate.flops == pytest.approx(without.flops + estimate.tuning_flops)


@pytest.mark.parametrize(
    ("grids", "message"),
    [
        ({"lora": []}, "tune.grids.lora: must be a non-empty list of learning rates, got []"),
        ({"lora": 0.005}, "tune.grids.lora: must be a non-empty list of learning rates, got 0.005"),
        ({"lora": "1e-3"}, "tune.grids.lora: must be a non-empty list of learning rates, got '1e-3'"),
        ({"qalora": [0.01, 0.0]}, "tune.grids.qalora: every learning rate must be a number > 0, got 0.0"),
        ({"full": [-1e-3]}, "tune.grids.full: every learning rate must be a number > 0, got -0.001"),
        ({"full": [True]}, "tune.grids.full: every learning rate must be a number > 0, got True"),
        ({"full": ["1e-3"]}, "tune.grids.full: every learning rate must be a number > 0, got '1e-3'"),
        ({"linear": [0.1, 0.1]}, "tune.grids.linear: a learning rate is listed twice"),
        (
            {"lora": [0.005]},
            "tune.grids.lora: a grid brackets a rate, so it needs at least 2 rates, got [0.005]",
        ),
        ({"dora": [0.001]}, "tune.grids.dora: not a tunable method family"),
    ],
)
def test_a_bad_grid_is_refused_at_load_naming_the_key(grids, message):
    from conftest import REPO

    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["tune"]["grids"] = grids
    with pytest.raises(ConfigError) as error:
        study_config.load(raw)
    assert message in str(error.value)


# The tiny study, cut to the runs of its two tuned families (full and qalora): a real workflow, in
# the seconds its 1-epoch runs take.
FULL_RUN = "results/runs/digits/full/deit_tiny/seed0/metrics.json"
QALORA_RUN = "results/runs/digits/qalora4_r8/deit_tiny/seed0/metrics.json"
QALORA_CHOICE = "results/tuning/digits/qalora/deit_tiny/choice.json"


def snakemake(workdir, config, *args):
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = snakemake_command(workdir, path, "--cores", "2", *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stdout + result.stderr


def planned(output: str) -> dict[str, int]:
    """The jobs a dry run plans, by rule (none when there is nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def tuned_workdir(tmp_path_factory):
    """The full and qalora4_r8 runs of the tiny study, each at its family's tuned rate."""
    workdir = tmp_path_factory.mktemp("tuned")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    snakemake(workdir, config, FULL_RUN, QALORA_RUN)
    return workdir, config


def copy_of(tuned_workdir, tmp_path):
    workdir, config = tuned_workdir
    shutil.copytree(workdir, tmp_path / "w", symlinks=True)  # copy2 keeps the files' times
    return tmp_path / "w", copy.deepcopy(config)


def test_runs_read_their_rate_from_their_familys_choice(tuned_workdir):
    workdir, _ = tuned_workdir
    for family, run in (("full", FULL_RUN), ("qalora", QALORA_RUN)):
        choice = json.loads((workdir / f"results/tuning/digits/{family}/deit_tiny/choice.json").read_text())
        assert [entry["lr"] for entry in choice["grid"]] == yaml.safe_load(TINY_CONFIG.read_text())["tune"][
            "grids"
        ][family]
        assert choice["lr"] == tune.choose(choice["grid"], choice["tie_band"])["lr"]
        assert choice["at_edge"] is None and choice["extensions"] == []  # the grid brackets it
        config = json.loads((workdir / run).with_name("config.json").read_text())
        metrics = json.loads((workdir / run).read_text())
        assert config["method"]["lr"] == metrics["lr"] == choice["lr"]


def test_a_real_divergence_is_ranked_last_and_the_job_goes_on(tuned_workdir):
    workdir, _ = tuned_workdir
    choice = json.loads((workdir / "results/tuning/digits/full/deit_tiny/choice.json").read_text())
    (diverged,) = [entry for entry in choice["grid"] if entry["diverged"]]
    assert diverged["lr"] == 100.0 and diverged["val_top1"] is None and "the loss is" in diverged["error"]
    log = (workdir / diverged["run_dir"] / "train.log").read_text()
    assert log.rstrip().endswith(f"diverged: {diverged['error']}") and "Traceback" not in log
    assert (
        choice["lr"] == 3.0e-4
        and "diverged" in (workdir / "results/tuning/digits/full/deit_tiny/tune.log").read_text()
    )


def test_tuning_runs_never_evaluate_the_test_split(tuned_workdir):
    workdir, _ = tuned_workdir
    short_runs = sorted((workdir / "results/tuning").glob("*/*/*/lr*/train.log"))
    assert len(short_runs) == 6
    for log in short_runs:
        assert "test" not in log.read_text()
        if (log.parent / "metrics.json").exists():  # not where the loss diverged
            metrics = json.loads((log.parent / "metrics.json").read_text())
            assert "val_top1" in metrics and not [key for key in metrics if key.startswith("test")]
    for log in (workdir / "results/tuning").glob("*/*/*/tune.log"):
        assert "test" not in log.read_text()


def test_a_grid_value_added_plans_only_its_familys_tuning_and_runs(tuned_workdir, tmp_path):
    workdir, config = copy_of(tuned_workdir, tmp_path)
    assert planned(snakemake(workdir, config, "-n", FULL_RUN, QALORA_RUN)) == {}
    config["tune"]["grids"]["qalora"].append(1.0e-2)
    plan = snakemake(workdir, config, "-n", FULL_RUN, QALORA_RUN)
    # qalora's tuning reruns; its run waits for the choice (a checkpoint) to know its rate; full's
    # tuning and run are untouched
    assert planned(plan) == {"tune": 1, "train": 1}
    first_outputs = re.findall(r"^    output: ([^,\n]+)", plan, re.M)
    assert sorted(first_outputs) == sorted([QALORA_CHOICE, QALORA_RUN])


def test_a_rewritten_unchanged_choice_reruns_no_run_and_a_changed_one_does(tuned_workdir, tmp_path):
    workdir, config = copy_of(tuned_workdir, tmp_path)
    before = json.loads((workdir / QALORA_CHOICE).read_text())
    snakemake(workdir, config, QALORA_CHOICE, "--forcerun", "tune")  # the same grid, rewritten
    after = json.loads((workdir / QALORA_CHOICE).read_text())
    assert after["provenance"] != before["provenance"] and after["lr"] == before["lr"]
    assert planned(snakemake(workdir, config, "-n", QALORA_RUN)) == {}

    config["tune"]["grids"]["qalora"] = [1.0e-4, 2.0e-4]  # the choice can only change
    assert before["lr"] not in (1.0e-4, 2.0e-4, 5.0e-5, 2.5e-5, 4.0e-4, 8.0e-4)  # nor can an extension
    snakemake(workdir, config, QALORA_CHOICE)
    plan = snakemake(workdir, config, "-n", QALORA_RUN)
    assert planned(plan) == {"train": 1} and "Params have changed" in plan


def fake_training(val_top1_at, diverges_from=float("inf")):
    """A stand-in for vitpeft.runs.train_run: validation top-1 as a function of the rate, a
    diverged loss from ``diverges_from`` up; it records the rates in the order trained."""
    trained = []

    def train_run(run, data_dir, backbone, out_dir, threads=None, convergence=None, evaluate_test=True):
        assert not evaluate_test  # tuning never reads the test split
        lr = run["method"]["lr"]
        trained.append(lr)
        if lr >= diverges_from:
            raise FloatingPointError(f"the loss is nan at epoch 1 (lr {lr})")
        return {
            "val_top1": val_top1_at(lr),
            "val_top5": 100.0,
            "epochs": 3,
            "train_time_s": 1.0,
            "converged": True,
        }

    return train_run, trained


def tune_with(monkeypatch, tmp_path, demo_config, grid, train_run, max_extensions=2, val_per_class=1000):
    import vitpeft.runs
    from vitpeft.io import write_json

    monkeypatch.setattr(vitpeft.runs, "train_run", train_run)
    write_json(tmp_path / "manifest.json", {"counts_per_class": {"val": [val_per_class] * 10}})
    config = copy.deepcopy(demo_config)
    config["tune"]["grids"]["lora"] = grid
    runs = [run.to_dict() for run in tune.tuning_runs(config, "vit_w64_d4", "digits", "lora")]
    choice_path = tmp_path / "choice.json"
    choice = tune.tune_family(runs, tmp_path, None, choice_path, max_extensions=max_extensions)
    assert json.loads(choice_path.read_text()) == json.loads(json.dumps(choice))
    return choice


def peaked_at(best):
    """Validation top-1 that peaks at the rate ``best`` and falls a point per doubling away from it."""
    import math

    return lambda lr: 95.0 - abs(math.log2(lr / best))


def test_the_choice_is_the_middle_of_the_rates_within_one_standard_error_of_the_best(
    monkeypatch, tmp_path, demo_config
):
    """540 validation images: at 98% top-1 one standard error is 0.60 points (3 images). The top
    rate's 0.4-point lead is within it: of the two tied rates the lower middle is chosen, inside the
    grid, and nothing is extended. On 10,000 images (0.14 points) the lead counts, and the grid is
    extended. A plateau over the whole grid (a linear probe's, say) keeps its middle rate instead
    of walking off an edge one noisy extension after another."""
    top1 = {0.0025: 96.5, 0.005: 97.6, 0.01: 98.0, 0.02: 90.0}.get
    train_run, trained = fake_training(top1)
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.0025, 0.005, 0.01], train_run, val_per_class=54)
    assert trained == [0.0025, 0.005, 0.01] and choice["lr"] == 0.005
    assert choice["val_images"] == 540 and choice["tie_band"] == pytest.approx(0.6025, abs=1e-4)
    train_run, trained = fake_training(top1)
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.0025, 0.005, 0.01], train_run)
    assert trained == [0.0025, 0.005, 0.01, 0.02] and choice["lr"] == 0.01
    flat = {0.05: 94.6, 0.1: 93.9, 0.2: 94.2}.get
    train_run, trained = fake_training(flat)
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.05, 0.1, 0.2], train_run, val_per_class=54)
    assert trained == [0.05, 0.1, 0.2] and choice["lr"] == 0.1 and choice["at_edge"] is None


def test_a_choice_at_the_top_edge_extends_the_grid_by_its_ratio_until_it_lies_inside(
    monkeypatch, tmp_path, demo_config
):
    train_run, trained = fake_training(peaked_at(0.02))
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.0025, 0.005, 0.01], train_run)
    assert trained == [0.0025, 0.005, 0.01, 0.02, 0.04]
    assert choice["lr"] == 0.02 and choice["at_edge"] is None
    assert choice["extensions"] == [{"lr": 0.02, "beyond": "highest"}, {"lr": 0.04, "beyond": "highest"}]
    assert [entry["lr"] for entry in choice["grid"]] == trained


def test_a_choice_at_the_bottom_edge_extends_downwards_by_the_grids_own_ratio(
    monkeypatch, tmp_path, demo_config
):
    train_run, trained = fake_training(peaked_at(0.0003))
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.003, 0.03], train_run)  # a ratio of 10
    assert trained == [0.003, 0.03, 0.0003, 0.00003]
    assert choice["lr"] == 0.0003 and choice["at_edge"] is None


def test_a_choice_still_at_an_edge_after_the_last_extension_is_recorded_as_such(
    monkeypatch, tmp_path, demo_config
):
    train_run, trained = fake_training(lambda lr: 90.0 + 100 * lr)  # the larger, the better: no optimum
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.002, 0.005, 0.01], train_run, max_extensions=1)
    assert trained == [0.002, 0.005, 0.01, 0.02]
    assert choice["lr"] == 0.02 and choice["at_edge"] == "highest" and choice["max_extensions"] == 1


def test_a_diverged_rate_is_ranked_last_and_does_not_stop_the_job(monkeypatch, tmp_path, demo_config):
    train_run, trained = fake_training(lambda lr: 90.0 + 1000 * lr, diverges_from=0.01)
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.0025, 0.005, 0.01], train_run)
    assert trained == [0.0025, 0.005, 0.01]  # the diverged top rate brackets the choice: no extension
    assert choice["lr"] == 0.005 and choice["at_edge"] is None and choice["extensions"] == []
    diverged = choice["grid"][2]
    assert diverged["diverged"] and diverged["val_top1"] is None and "loss is nan" in diverged["error"]
    every_rate_diverged, _ = fake_training(lambda lr: 90.0, diverges_from=0.0)
    choice = tune_with(monkeypatch, tmp_path, demo_config, [0.005, 0.01], every_rate_diverged)
    assert all(entry["diverged"] for entry in choice["grid"]) and choice["at_edge"] == "lowest"
