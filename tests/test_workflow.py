"""The workflow as Snakemake sees it: lint, dry runs of every rule's target, config errors, pins."""

import re
import subprocess

import pytest
import yaml
from conftest import REPO, snakemake_command


def snakemake(*args, workdir, configfile=REPO / "config.yaml", check=True):
    cmd = snakemake_command(workdir, configfile, *args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_lint_is_clean(tmp_path):
    result = snakemake("--lint", workdir=tmp_path)
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def planned_jobs(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


DEMO = yaml.safe_load((REPO / "config.yaml").read_text())
SEEDS = len(DEMO["studies"]["demo"]["seeds"])
CELLS = len(DEMO["studies"]["demo"]["methods"]) + 1  # + the scratch baseline of the transfer check
# One train job (and one export job) per model x dataset x method, for all its seeds; the demo has
# one model and one dataset, so a job per cell.
JOBS = CELLS
# One tuning job per method family with a grid (full, scratch, linear, lora, qlora, adalora, qalora)
# x model x dataset.
TUNE_JOBS = len(DEMO["tune"]["grids"])
UP_TO_CELLS = {
    "prepare_data": 2,
    "pretrain": 1,
    "onnx_graph": 1,  # the float ONNX graph of the model on the dataset, traced once for all exports
    "tune": TUNE_JOBS,
    "train": JOBS,
    "export": JOBS,  # every method's writes its INT-N ONNX file too
    "cell": CELLS,
}
# The transfer check's seeds beyond the study's: a job each for full fine-tuning and scratch
EXTRA_TRANSFER_SEEDS = set(DEMO["studies"]["demo"]["transfer_seeds"]) - set(DEMO["studies"]["demo"]["seeds"])
TRANSFER = {"train_transfer_seeds": 2, "transfer_runs": 1}
ANALYSIS = {
    **TRANSFER,
    "aggregate": 1,
    "stats": 1,
    "figures": 1,
    "findings": 1,  # the findings section and the abstract's last sentences
    "published": 1,  # published numbers beside the study's
    "tables": 1,
    "checklist": 1,
    "paper": 1,
}
# logistic regression, an RBF SVM and k-NN on each dataset: inputs of the figures and tables
BASELINES = {"baseline": 3 * len(DEMO["studies"]["demo"]["datasets"])}
UP_TO_PAPER = {**UP_TO_CELLS, **BASELINES, **ANALYSIS}
# the supplement: every seed's curves, then LaTeX over the paper's generated parts and the checklist
SUPPLEMENT = {
    **{rule: count for rule, count in ANALYSIS.items() if rule not in ("paper", "findings", "published")},
    "supplement_figures": 1,
    "supplement": 1,
}
ONE_CELL = {"prepare_data": 2, "pretrain": 1, "onnx_graph": 1, "tune": 1, "train": 1, "export": 1, "cell": 1}


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("paper.pdf", UP_TO_PAPER),
        ("supplement.pdf", {**UP_TO_CELLS, **BASELINES, **SUPPLEMENT}),
        ("results/submission.tar.gz", {**UP_TO_PAPER, **SUPPLEMENT, "submission": 1}),
        ("results/lora_r8_digits", ONE_CELL),
        ("results/qlora4_r8_digits", ONE_CELL),
        ("results/adalora_r8_digits", ONE_CELL),
        ("results/lora_r16_digits", ONE_CELL),
        (
            "results/qalora4_r8_digits",
            {
                "prepare_data": 2,
                "pretrain": 1,
                "onnx_graph": 1,
                "tune": 1,
                "train": 1,
                "export": 1,
                "cell": 1,
            },
        ),
        # scratch is tuned on its own grid: neither its tuning nor its runs need the backbone
        (
            "results/scratch_digits",
            {"prepare_data": 1, "onnx_graph": 1, "tune": 1, "train": 1, "export": 1, "cell": 1},
        ),
        *[
            (
                f"results/lora_r8_{dataset}",
                {"download": 1, **ONE_CELL},
            )
            for dataset in ("cifar10", "cifar100", "tinyimagenet")
        ],
        ("resources/downloads/tiny-imagenet-200.zip", {"download": 1}),
        (
            "results/runs/digits/full/vit_w64_d4/seed1/metrics.json",
            {"prepare_data": 2, "pretrain": 1, "tune": 1, "train": 1},
        ),
        (
            "results/runs/digits/qalora4_r8/vit_w64_d4/seed0/export/model_int.onnx",
            {"prepare_data": 2, "pretrain": 1, "onnx_graph": 1, "tune": 1, "train": 1, "export": 1},
        ),
        (
            "results/tuning/digits/qalora/vit_w64_d4/choice.json",
            {"prepare_data": 2, "pretrain": 1, "tune": 1},
        ),
        ("resources/data/digits/manifest.json", {"prepare_data": 1}),
        ("resources/backbones/vit_w64_d4_glyphs.safetensors", {"prepare_data": 1, "pretrain": 1}),
        ("results/analysis/runs.csv", {**UP_TO_CELLS, "aggregate": 1}),
        ("results/analysis/transfer.csv", {**UP_TO_CELLS, **TRANSFER, "aggregate": 1, "stats": 1}),
        (
            "results/paper/convergence.pdf",
            {**UP_TO_CELLS, **BASELINES, **TRANSFER, "aggregate": 1, "stats": 1, "figures": 1},
        ),
        (
            "results/paper/macros.tex",
            {**UP_TO_CELLS, **BASELINES, **TRANSFER, "aggregate": 1, "stats": 1, "tables": 1},
        ),
        # the extra seeds are full fine-tuning's and scratch's only
        (
            f"results/runs/digits/full/vit_w64_d4/seed{max(EXTRA_TRANSFER_SEEDS)}/metrics.json",
            {"prepare_data": 2, "pretrain": 1, "tune": 1, "train_transfer_seeds": 1},
        ),
        (f"results/runs/digits/lora_r8/vit_w64_d4/seed{max(EXTRA_TRANSFER_SEEDS)}/metrics.json", None),
        ("results/baselines/digits/svc.json", {"prepare_data": 1, "baseline": 1}),
        ("results/baselines/cifar100/knn.json", {"download": 1, "prepare_data": 1, "baseline": 1}),
    ],
)
def test_dry_run_of_each_rule_target(tmp_path, target, expected):
    if expected is None:  # no rule makes it
        result = snakemake("-n", target, workdir=tmp_path, check=False)
        assert result.returncode != 0
        assert f"No rule to produce {target}" in result.stdout + result.stderr
        return
    assert planned_jobs(snakemake("-n", target, workdir=tmp_path).stdout) == expected


def test_a_partial_study_builds_its_paper_from_the_finished_cells_only(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["studies"]["demo"]["partial"] = True
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(config))
    finished = tmp_path / "results" / "lora_r8_digits" / "summary.csv"
    finished.parent.mkdir(parents=True)
    finished.write_text("dataset,method,model,seed\n")
    plan = snakemake("-n", "paper.pdf", workdir=tmp_path, configfile=path).stdout
    # Only the finished cell goes into the paper; none of the other cells is planned, nor the
    # transfer check's runs. (The cell's runs are not in this empty folder, so Snakemake would
    # rebuild that one cell.)
    analysis = {rule: count for rule, count in ANALYSIS.items() if rule != "train_transfer_seeds"}
    assert planned_jobs(plan) == {**ONE_CELL, **BASELINES, **analysis}
    assert "output: results/lora_r8_digits" in plan
    (figures,) = job_inputs(plan, "figures").values()
    assert {f for f in figures if f.endswith("metrics.json")} == {
        f"results/runs/digits/lora_r8/vit_w64_d4/seed{seed}/metrics.json" for seed in range(SEEDS)
    }


def job_inputs(plan: str, rule: str) -> dict[str, set[str]]:
    """The input files of each job of ``rule`` in a dry run's plan, by the job's outputs."""
    blocks = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", plan, re.M)
    return {
        re.search(r"output: (.*)", body)[1]: set(re.search(r"input: (.*)", body)[1].split(", "))
        for name, body in blocks
        if name == rule
    }


def test_every_run_file_the_analysis_reads_is_a_declared_input(tmp_path):
    """A rule that runs reruns the missing inputs it declares, never those it reads undeclared: a run
    whose files are gone (e.g. a failed forced rerun) is retrained before the analysis reads it."""
    from vitpeft import config as study_config
    from vitpeft.submission import RUN_FILES

    config = study_config.load(yaml.safe_load((REPO / "config.yaml").read_text()))
    study = study_config.study(config)
    runs = {
        (method, dataset): [
            f"results/runs/{dataset}/{method}/{model}/seed{seed}"
            for model in study["models"]
            for seed in study["seeds"]
        ]
        for method in study_config.study_methods(config)
        for dataset in study["datasets"]
    }
    every_run = [run for cell in runs.values() for run in cell]
    plan = snakemake("-n", "results/submission.tar.gz", workdir=tmp_path).stdout

    (figures,) = job_inputs(plan, "figures").values()  # the curves of every run
    assert {f"{run}/metrics.json" for run in every_run} <= figures
    (submission,) = job_inputs(plan, "submission").values()  # the best runs, picked as it runs
    assert {f"{run}/{name}" for run in every_run for name in RUN_FILES} <= submission
    (transfer,) = job_inputs(plan, "transfer_runs").values()  # and the extra seeds' runs
    assert transfer == {
        f"results/runs/{dataset}/{method}/{model}/seed{seed}/metrics.json"
        for method in ("full", "scratch")
        for dataset in study["datasets"]
        for model in study["models"]
        for seed in study["transfer_seeds"]
    }
    cells = job_inputs(plan, "cell")  # each run's metrics, provenance and export report
    assert cells.keys() == {f"results/{method}_{dataset}" for method, dataset in runs}
    for (method, dataset), cell_runs in runs.items():
        read = {f"{run}/{name}" for run in cell_runs for name in ("metrics.json", "provenance.json")}
        assert read <= cells[f"results/{method}_{dataset}"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"methods": ["full", "dora_r8"]}, "studies.demo.methods: 'dora_r8': unknown method"),
        (
            {"methods": ["full", "qlora3_r8"]},
            "studies.demo.methods: 'qlora3_r8': qlora3_r8: the quantized base must have 8 or 4 bits, got 3",
        ),
        ({"methods": ["adalora_r16"]}, "target rank 16 is above its initial rank init_r=12"),
        ({"methods": ["lora_r0"]}, "LoRA rank r must be a positive integer, got 0"),
        ({"models": ["vit_giant"]}, "unknown model 'vit_giant'"),
        ({"datasets": ["cifar11"]}, "unknown dataset 'cifar11'"),
        (
            {"transfer_seeds": [0, 1, 9]},
            "studies.demo.transfer_seeds: [0, 1, 9] lacks the study's seed(s) [2, 3, 4]",
        ),
        (
            {"transfer_check": False},  # the demo config keeps its transfer_seeds
            "studies.demo.transfer_seeds: given, but transfer_check is off",
        ),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["studies"]["demo"].update(edit)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "paper.pdf", workdir=tmp_path, configfile=path, check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Job stats" not in result.stdout


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (
            "results/lora_r8_cifar11",
            f"unknown dataset 'cifar11'; the datasets section defines {sorted(DEMO['datasets'])}",
        ),
        ("results/dora_r8_digits", "method 'dora_r8': unknown method 'dora_r8'; the known forms are: full, "),
        (
            "results/runs/digits/lora_r8/vit_giant/seed0/metrics.json",
            f"unknown model 'vit_giant'; the models section defines {sorted(DEMO['models'])}",
        ),
    ],
)
def test_a_target_naming_an_unknown_dataset_model_or_method_fails_in_one_line(tmp_path, target, says):
    result = snakemake("-n", target, workdir=tmp_path, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "ConfigError" in line]
    assert len(errors) == 1 and errors[0].startswith("ConfigError: requested target: ") and says in errors[0]
    assert "Traceback" not in result.stderr + result.stdout and "KeyError" not in result.stderr
    assert "Job stats" not in result.stdout


def pins(lines):
    return dict(
        line.strip().split("==") for line in lines if "==" in line and not line.strip().startswith("#")
    )


def pinned_in(filename):
    return pins((REPO / filename).read_text().splitlines())


def test_conda_env_pins_equal_requirements():
    requirements = pinned_in("requirements.txt")
    env = yaml.safe_load((REPO / "envs" / "vitpeft.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == requirements
    assert requirements["torch"] == "2.14.1" and requirements["torchvision"] == "0.29.1"
    constraints = {k.lower().replace("_", "-"): v for k, v in pinned_in("constraints.txt").items()}
    dev = pinned_in("requirements-dev.txt")
    assert dev and not dev.keys() & requirements.keys()
    for name, version in {**requirements, **dev}.items():
        assert constraints[name.lower()] == version, name


def test_the_package_declares_every_runtime_pin():
    """``pip install .`` outside this repository's Makefile gets every package a job imports:
    requirements.txt's pins are the package's dependencies, and nothing else (the test tools are
    requirements-dev.txt's)."""
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(declared) == sorted(pinned_in("requirements.txt"))
    assert not {"pytest", "ruff", "pre-commit"} & set(declared)


def test_make_paper_installs_no_test_tools_and_make_test_adds_them_and_the_commit_hook():
    def plan(target):
        return subprocess.run(
            ["make", "-n", "-B", "-C", str(REPO), target], capture_output=True, text=True, check=True
        ).stdout

    paper = plan(".venv/.installed")
    assert "-r requirements.txt" in paper and "requirements-dev.txt" not in paper
    assert "pre-commit install" not in paper
    dev = plan(".venv/.installed-dev")
    assert "-r requirements-dev.txt" in dev and ".venv/bin/pre-commit install" in dev


def test_installed_versions_equal_the_pins():
    from importlib.metadata import version

    for requirements in ("requirements.txt", "requirements-dev.txt"):
        for name, pinned in pinned_in(requirements).items():
            assert version(name) == pinned, name


def test_the_full_study_is_one_flag_away(tmp_path):
    import copy

    from vitpeft import compute
    from vitpeft import config as study_config

    result = snakemake("-n", "paper.pdf", "--config", "study=full", workdir=tmp_path)
    plan = result.stdout
    # The estimated compute and the runtime requests, once, as the workflow loads.
    full = study_config.load({**copy.deepcopy(DEMO), "study": "full"})
    line = compute.summary(full, compute.estimate_study(full))
    assert "GPU-hours" in line and result.stderr.count(line) == 1
    jobs = 3 * 3 * 11  # models x datasets x methods, each job all 3 seeds; no scratch: hub weights
    assert planned_jobs(plan) == {
        "download": 3,
        "prepare_data": 3,
        "onnx_graph": 3 * 3,  # models x datasets
        "tune": 3 * 3 * 6,  # models x datasets x the six families with a grid
        "train": jobs,
        "export": jobs,
        "cell": 33,
        "baseline": 3 * 3,  # three classical baselines on each dataset
        "aggregate": 1,
        "transfer_runs": 1,  # of no run: the full study has no transfer check
        "stats": 1,
        "figures": 1,
        "findings": 1,
        "published": 1,
        "tables": 1,
        "checklist": 1,
        "paper": 1,
    }


def test_the_full_study_resolves_hub_models_at_224_px_and_per_dataset_budgets():
    import copy

    from vitpeft import compute
    from vitpeft import config as study_config

    config = study_config.load({**copy.deepcopy(DEMO), "study": "full"})
    run = study_config.resolve_run(config, "deit_small", "tinyimagenet", "full", 2)
    assert (run.model.img_size, run.model.patch_size, run.model.backbone["source"]) == (224, 16, "timm")
    assert run.train.epochs == 50 and run.method.lr == 5.0e-5  # SSF's train_full.sh
    # SSF's fine-tuning recipe (config comments): its train.py's regularizers and augmentation.
    assert (run.train.label_smoothing, run.train.drop_path_rate, run.train.grad_clip) == (0.1, 0.0, 0.0)
    assert run.method.ema_decay == 0.99992
    assert (run.augment.mixup_alpha, run.augment.cutmix_alpha, run.augment.cutmix_switch_prob) == (
        0.8,
        1.0,
        0.5,
    )
    assert run.augment.randaugment and run.augment.randaugment_magnitude == 27  # timm's m9 of 10
    assert (run.augment.scale, run.augment.erasing_prob) == ((0.08, 1.0), 0.25)
    adalora = study_config.resolve_run(config, "deit_small", "cifar10", "adalora_r8", 0)
    assert adalora.method.lr == 1.0e-3 and adalora.method.ema_decay == 0.0  # pruned in place: no average
    assert study_config.resolve_run(config, "vit_small", "cifar100", "qalora4_r8", 0).train.epochs == 100
    assert config["models"]["deit_tiny"]["img_size"] == 224  # the demo's 16 px is overridden
    assert compute.job_resources(config, run)["gpu"] == 1
    demo_models = study_config.load(copy.deepcopy(DEMO))["models"]
    assert "deit_tiny" not in demo_models and demo_models["vit_w64_d4"]["img_size"] == 8


def test_slurm_profile_asks_for_each_training_jobs_resources(tmp_path):
    plan = snakemake(
        "-n", "--profile", str(REPO / "profiles" / "slurm"), "paper.pdf", workdir=tmp_path
    ).stdout
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", plan, re.M)
    resources = {
        rule: dict(re.findall(r"(\w+)=([^,\n]+)", re.search(r"resources: (.*)", body)[1]))
        for rule, body in blocks
        if rule in ("train", "pretrain")
    }
    # vit_w64_d4's base from config.yaml (5 min per run); pretraining on glyphs gets three times a
    # run's time, a train job of five seeds five times.
    assert resources["pretrain"] == {**resources["train"], "runtime": "15"}
    assert {k: resources["train"][k] for k in ("mem_mb", "runtime", "gpu", "slurm_partition")} == {
        "mem_mb": "2000",
        "runtime": "25",
        "gpu": "0",
        "slurm_partition": "REPLACE-ME-gpu-partition",
    }


def test_the_longest_jobs_start_first(tmp_path):
    """Pretraining (every run but scratch waits for it), then train jobs by their estimated FLOPs:
    a long job started last would leave the other cores idle at the end."""
    plan = snakemake("-n", "paper.pdf", workdir=tmp_path).stdout
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", plan, re.M)
    priority = {
        re.search(r"method=(\w+)", body)[1] if rule == "train" else rule: int(
            re.search(r"priority: (\d+)", body)[1]
        )
        for rule, body in blocks
        if rule in ("train", "pretrain")
    }
    assert priority["pretrain"] > max(v for k, v in priority.items() if k != "pretrain")
    assert priority["full"] > priority["lora_r16"] > priority["lora_r4"] > priority["linear"]


def test_every_build_output_is_ignored_by_git(tmp_path):
    """After ``make paper`` (and the archive), ``git status`` shows nothing the build wrote."""
    plan = snakemake("-n", "results/submission.tar.gz", "supplement.pdf", workdir=tmp_path).stdout
    outputs = {path for line in re.findall(r"^    output: (.*)$", plan, re.M) for path in line.split(", ")}
    assert {"paper.pdf", "supplement.pdf"} <= outputs
    checked = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "check-ignore",
            "--no-index",
            "--verbose",
            "--non-matching",
            *sorted(outputs),
        ],
        capture_output=True,
        text=True,
    )
    tracked = [line.split("\t")[1] for line in checked.stdout.splitlines() if line.startswith("::")]
    assert tracked == []
