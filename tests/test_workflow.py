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
RUNS = CELLS * SEEDS
# QA-LoRA's export also writes its INT-N ONNX file (rule export_int); every other run's is rule export
INT_RUNS = sum(m.startswith("qalora") for m in DEMO["studies"]["demo"]["methods"]) * SEEDS
UP_TO_CELLS = {
    "prepare_data": 2,
    "pretrain": 1,
    "train": RUNS,
    "export": RUNS - INT_RUNS,
    "export_int": INT_RUNS,
    "cell": CELLS,
}
ANALYSIS = {"aggregate": 1, "stats": 1, "figures": 1, "tables": 1, "checklist": 1, "paper": 1}
# logistic regression, an RBF SVM and k-NN on each dataset: inputs of the figures and tables
BASELINES = {"baseline": 3 * len(DEMO["studies"]["demo"]["datasets"])}
UP_TO_PAPER = {**UP_TO_CELLS, **BASELINES, **ANALYSIS}
# the supplement: every seed's curves, then LaTeX over the paper's generated parts and the checklist
SUPPLEMENT = {
    **{rule: 1 for rule in ANALYSIS if rule != "paper"},
    "supplement_figures": 1,
    "supplement": 1,
}
ONE_CELL = {"prepare_data": 2, "pretrain": 1, "train": SEEDS, "export": SEEDS, "cell": 1}


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
            {"prepare_data": 2, "pretrain": 1, "train": SEEDS, "export_int": SEEDS, "cell": 1},
        ),
        ("results/scratch_digits", {"prepare_data": 1, "train": SEEDS, "export": SEEDS, "cell": 1}),
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
            {"prepare_data": 2, "pretrain": 1, "train": 1},
        ),
        (
            "results/runs/digits/qalora4_r8/vit_w64_d4/seed0/export/model_int.onnx",
            {"prepare_data": 2, "pretrain": 1, "train": 1, "export_int": 1},
        ),
        ("resources/data/digits/manifest.json", {"prepare_data": 1}),
        ("resources/backbones/vit_w64_d4_glyphs.safetensors", {"prepare_data": 1, "pretrain": 1}),
        ("results/analysis/runs.csv", {**UP_TO_CELLS, "aggregate": 1}),
        ("results/analysis/transfer.csv", {**UP_TO_CELLS, "aggregate": 1, "stats": 1}),
        (
            "results/paper/convergence.pdf",
            {**UP_TO_CELLS, **BASELINES, "aggregate": 1, "stats": 1, "figures": 1},
        ),
        ("results/paper/macros.tex", {**UP_TO_CELLS, **BASELINES, "aggregate": 1, "stats": 1, "tables": 1}),
        ("results/baselines/digits/svc.json", {"prepare_data": 1, "baseline": 1}),
        ("results/baselines/cifar100/knn.json", {"download": 1, "prepare_data": 1, "baseline": 1}),
    ],
)
def test_dry_run_of_each_rule_target(tmp_path, target, expected):
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
    # Only the finished cell goes into the paper; none of the other cells is planned. (Its runs are
    # not in this empty folder, so Snakemake would rebuild that one cell.)
    assert planned_jobs(plan) == {**ONE_CELL, **BASELINES, **ANALYSIS}
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


def pins(lines):
    return dict(
        line.strip().split("==") for line in lines if "==" in line and not line.strip().startswith("#")
    )


def test_conda_env_pins_equal_requirements():
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs" / "vitpeft.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == requirements
    assert requirements["torch"] == "2.14.1" and requirements["torchvision"] == "0.29.1"
    constraints = {
        k.lower().replace("_", "-"): v
        for k, v in pins((REPO / "constraints.txt").read_text().splitlines()).items()
    }
    for name, version in requirements.items():
        assert constraints[name.lower()] == version, name


def test_installed_versions_equal_the_pins():
    from importlib.metadata import version

    for name, pinned in pins((REPO / "requirements.txt").read_text().splitlines()).items():
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
    runs = 3 * 3 * 11 * 3  # models x datasets x methods x seeds; no scratch: hub weights
    int_runs = 3 * 3 * 1 * 3  # qalora4_r8
    assert planned_jobs(plan) == {
        "download": 3,
        "prepare_data": 3,
        "train": runs,
        "export": runs - int_runs,
        "export_int": int_runs,
        "cell": 33,
        "baseline": 3 * 3,  # three classical baselines on each dataset
        "aggregate": 1,
        "stats": 1,
        "figures": 1,
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
    assert run.train.epochs == 50 and run.method.lr == 1.25e-4
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
    # vit_w64_d4's base from config.yaml; pretraining on glyphs gets three times the time.
    assert resources["pretrain"] == {**resources["train"], "runtime": "15"}
    assert {k: resources["train"][k] for k in ("mem_mb", "runtime", "gpu", "slurm_partition")} == {
        "mem_mb": "2000",
        "runtime": "5",
        "gpu": "0",
        "slurm_partition": "REPLACE-ME-gpu-partition",
    }
