# Config validation, wildcard constraints and the input functions of every stage.
import dataclasses
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import vitpeft.config as study_config
from vitpeft import compute
from vitpeft.baselines import BASELINE_NAMES
from vitpeft.data.sources import ARCHIVES, archive_md5, archive_url
from vitpeft.io import canonical
from vitpeft.methods import method_config
from vitpeft.submission import RUN_FILES as SUBMITTED_RUN_FILES
from vitpeft import tune
from vitpeft.analysis.seed_curves import SEED_CURVES
from vitpeft.paper import template_files

# schema + semantic checks; fails before any job, naming the key and where it was set
study_config.load(config, command_line=workflow.config_settings.config)
# The study's estimated compute and what its jobs ask a scheduler for, before anything runs.
STUDY_COMPUTE = compute.estimate_study(config)
print(compute.summary(config, STUDY_COMPUTE), file=sys.stderr)

STUDY = study_config.study(config)
METHODS = study_config.study_methods(config)
# The transfer check's seeds beyond the study's: only full fine-tuning and scratch train them.
EXTRA_TRANSFER_SEEDS = study_config.extra_transfer_seeds(config)
TRANSFER_METHODS = [study_config.TRANSFER_REFERENCE, study_config.TRANSFER_BASELINE]
PAPER_DIR = Path(workflow.basedir) / "paper"
# One training job (and one export job) per model x dataset x method covers every seed, in one
# process: the imports and set-up of torch, timm and peft cost several seconds per process, as much
# as a whole demo run's training. The runs keep a folder each.
JOB_DIR = "results/runs/{dataset}/{method}/{model}"
RUN_DIR = f"{JOB_DIR}/seed{{seed}}"
PAPER_TEMPLATES = PAPER_DIR / "templates"
SPLIT_FILES = ["train.npz", "val.npz", "test.npz", "manifest.json"]
# One tuning job per method family x model x dataset: its choice, and its short runs beside it.
TUNE_DIR = "results/tuning/{dataset}/{family}/{model}"


# A method is any lower-case name here, not only one in the grammar (METHOD_WILDCARD): a target
# naming an unknown method then reaches known_names, which says what is known. The split of
# {method}_{dataset} stays unique: a dataset name has no underscore.
wildcard_constraints:
    method=r"[a-z][a-z0-9_]*",
    dataset=r"[a-z][a-z0-9]*",
    model=r"[a-z][a-z0-9_]*",
    seed=r"\d+",
    archive="|".join(re.escape(a.name) for a in ARCHIVES.values()),
    baseline="|".join(BASELINE_NAMES),
    family="|".join(tune.TUNABLE_FAMILIES),


def known_names(wildcards):
    """Stop the workflow in one line, as a bad config value does, if a requested target names a
    dataset, model or method that the config does not know. An exception raised in an input
    function reaches the user wrapped in Snakemake's InputFunctionException, with a traceback;
    SystemExit passes through it."""
    names = ("dataset", "model", "method")
    try:
        study_config.check_target_names(
            config, **{name: getattr(wildcards, name, None) for name in names}
        )
    except study_config.ConfigError as err:
        raise SystemExit(f"ConfigError: {err}") from None


def dataset_files(dataset):
    return [f"resources/data/{dataset}/{name}" for name in SPLIT_FILES]


def dataset_archive(wildcards):
    """The downloaded archive a dataset is converted from, if it comes from one."""
    known_names(wildcards)
    kind = config["datasets"][wildcards.dataset]["kind"]
    return (
        {"archive": f"resources/downloads/{ARCHIVES[kind].name}"}
        if kind in ARCHIVES
        else {}
    )


def download_spec(wildcards):
    """The config entry of a dataset whose archive is ``wildcards.archive`` (for its URL and MD5)."""
    for spec in config["datasets"].values():
        if (
            spec["kind"] in ARCHIVES
            and ARCHIVES[spec["kind"]].name == wildcards.archive
        ):
            return {"url": archive_url(spec), "md5": archive_md5(spec)}
    raise ValueError(f"no dataset in the config is built from {wildcards.archive}")


def backbone_files(model):
    """The backbone weights and record of the pretrain rule, for a model whose source is pretrain."""
    stem = (
        f"resources/backbones/{model}_{config['models'][model]['backbone']['dataset']}"
    )
    return {"weights": f"{stem}.safetensors", "meta": f"{stem}.json"}


def train_inputs(wildcards):
    known_names(wildcards)
    inputs = {"data": dataset_files(wildcards.dataset)}
    if not method_config(wildcards.method, config["methods"]).uses_pretrained_backbone:
        return inputs
    backbone = config["models"][wildcards.model]["backbone"]
    if backbone["source"] == "pretrain":
        inputs["backbone"] = backbone_files(wildcards.model)["weights"]
    elif backbone["source"] == "file":
        inputs["backbone"] = backbone["path"]
    return inputs


def seed_files(name, seeds=STUDY["seeds"]):
    """``name`` in the folder of every seed of a job's model x dataset x method, in seed order."""
    return [f"{JOB_DIR}/seed{seed}/{name}" for seed in seeds]


def export_inputs(wildcards):
    run_files = {
        name: [path.format(**wildcards) for path in seed_files(f"{name}.{ext}")]
        for name, ext in [
            ("metrics", "json"),
            ("config", "json"),
            ("provenance", "json"),  # where it trained: exact or tolerant top-1 tie
            ("checkpoint", "safetensors"),
        ]
    }
    return {**train_inputs(wildcards), **run_files}


def training_runs(wildcards, seeds=STUDY["seeds"]):
    """The runs of one training job: every seed of the study, in seed order."""
    known_names(wildcards)
    return [
        study_config.resolve_run(
            config, wildcards.model, wildcards.dataset, wildcards.method, seed
        )
        for seed in seeds
    ]


def transfer_training_runs(wildcards):
    """The runs of one job of the transfer check's extra seeds."""
    return training_runs(wildcards, EXTRA_TRANSFER_SEEDS)


def pretraining_runs(wildcards):
    known_names(wildcards)
    return [study_config.pretrain_run(config, wildcards.model)]


def job_resource(name, runs_of=training_runs):
    """A resource of the job whose runs ``runs_of(wildcards)`` gives (more on a retry)."""
    return lambda wildcards, attempt: compute.job_resources(
        config, runs_of(wildcards), attempt
    )[name]


def job_priority(runs_of=training_runs):
    """Longest first: a train job's estimated FLOPs, in hundredths of a decade. Snakemake starts
    the ready job of highest priority; a long job started last would leave the other cores idle at
    the end. (Pretraining goes before all: every run but scratch waits for it.)"""
    return lambda wildcards: round(
        100
        * math.log10(
            sum(compute.estimated_flops(config, run) for run in runs_of(wildcards))
        )
    )


def lr_choice(wildcards):
    """The tuning choice a job's runs read their learning rate from, once that checkpoint has run
    (none for a family without a grid). Ancient: a tuning job that reruns rewrites the file, but the
    runs rerun only if the rate in it changed, which reaches them as a param (:func:`run_configs`).
    """
    family = tune.tuning_family(wildcards.method, config)
    if family not in tune.study_families(config):
        return {}
    job = checkpoints.tune.get(
        dataset=wildcards.dataset, family=family, model=wildcards.model
    )
    return {"lr_choice": ancient(job.output.choice)}


def run_configs(wildcards, runs_of=training_runs):
    """The resolved config of each run of a training job, at its family's tuned learning rate."""
    runs = runs_of(wildcards)
    choice = lr_choice(wildcards)
    if choice:
        lr = tune.chosen_lr(choice["lr_choice"])
        runs = [tune.with_lr(run, lr) for run in runs]
    return [canonical(run.to_dict()) for run in runs]


def tuning_runs(wildcards):
    """The short runs of one tuning job, one per rate of its family's grid."""
    return tune.tuning_runs(
        config, wildcards.model, wildcards.dataset, wildcards.family
    )


def tuning_budget(wildcards):
    """The runs a tuning job may train, its grid's extensions included (for its resources)."""
    return tune.budgeted_runs(
        config, wildcards.model, wildcards.dataset, wildcards.family
    )


def tuning_configs(wildcards):
    return [canonical(run.to_dict()) for run in tuning_runs(wildcards)]


def tuning_inputs(wildcards):
    """What the method a family is tuned with trains from: the data, and its backbone."""
    method = tune.representative_method(config, wildcards.family)
    return train_inputs(
        SimpleNamespace(dataset=wildcards.dataset, model=wildcards.model, method=method)
    )


def study_lr_choices():
    """The choice.json of every tuning job whose rate a paper cell's runs train at."""
    tuned = tune.study_families(config)
    jobs = {
        (dataset, tune.tuning_family(method, config))
        for method, dataset in paper_cells()
        if tune.tuning_family(method, config) in tuned
    }
    return [
        f"{TUNE_DIR}/choice.json".format(dataset=dataset, family=family, model=model)
        for dataset, family in sorted(jobs)
        for model in STUDY["models"]
    ]


def pretrain_config(wildcards):
    return canonical(pretraining_runs(wildcards)[0].to_dict())


def dataset_spec(wildcards):
    known_names(wildcards)
    return canonical(study_config.prepared_dataset_spec(config, wildcards.dataset))


def cell_run_dirs(method, dataset):
    """The folder of every run of a cell: all models x seeds."""
    # str.format, not expand: called for every cell by several rules, and expand is much slower
    return [
        RUN_DIR.format(dataset=dataset, method=method, model=model, seed=seed)
        for model in STUDY["models"]
        for seed in STUDY["seeds"]
    ]


ANNOUNCED_CELLS = set()


def announce_cell(method, dataset):
    """Say in one line, once, which study's models a cell asked for on the command line trains:
    the selected study's, whatever the dataset (the demo's 8 px model on CIFAR-10 shrinks it to
    8 px). The cells a paper is built from go unannounced."""
    requested = {t.rstrip("/") for t in workflow.dag_settings.targets}
    cell = (method, dataset)
    if cell in ANNOUNCED_CELLS or f"results/{method}_{dataset}" not in requested:
        return
    ANNOUNCED_CELLS.add(cell)
    print(study_config.cell_plan(config, method, dataset), file=sys.stderr)


def cell_runs(wildcards):
    """Each run of a cell: the metrics, provenance and export report that the cell reads."""
    known_names(wildcards)
    announce_cell(wildcards.method, wildcards.dataset)
    runs = cell_run_dirs(wildcards.method, wildcards.dataset)
    return {
        "metrics": [f"{run}/metrics.json" for run in runs],
        # read beside each metrics.json (vitpeft.analysis.aggregate.run_row)
        "provenance": [f"{run}/provenance.json" for run in runs],
        "exports": [f"{run}/export/report.json" for run in runs],
    }


def paper_cells():
    """(method, dataset) of every cell the paper is built from."""
    cells = [(method, dataset) for method in METHODS for dataset in STUDY["datasets"]]
    if STUDY.get("partial"):
        # A partial study's paper is built from the cells already finished; the checklist lists
        # the others, which are built by their own targets (e.g. on a cluster).
        return [
            (method, dataset)
            for method, dataset in cells
            if Path(f"results/{method}_{dataset}", "summary.csv").exists()
        ]
    return cells


def study_cells():
    return [f"results/{method}_{dataset}" for method, dataset in paper_cells()]


def transfer_run_files(name):
    """``name`` of every run the transfer check compares: full fine-tuning and scratch at each
    transfer seed, on every model and dataset of the study."""
    files = [
        Path(
            RUN_DIR.format(dataset=dataset, method=method, model=model, seed=seed), name
        )
        for dataset in STUDY["datasets"]
        for method in TRANSFER_METHODS
        for model in STUDY["models"]
        for seed in study_config.transfer_seeds(config)
    ]
    # A partial study compares the runs already finished; the checklist counts the others.
    return [str(f) for f in files if not STUDY.get("partial") or f.exists()]


def study_run_files(*names):
    """The files ``names`` of every run in the paper's cells. The analysis rules that read runs'
    own files (not only the cell summaries) declare them, so a run whose files are gone is rebuilt
    before they run."""
    return [
        f"{run}/{name}"
        for method, dataset in paper_cells()
        for run in cell_run_dirs(method, dataset)
        for name in names
    ]


def study_backbone_metas():
    return [
        backbone_files(model)["meta"]
        for model in STUDY["models"]
        if config["models"][model]["backbone"]["source"] == "pretrain"
    ]


def baseline_spec(wildcards):
    """The config's ``baselines`` section as one baseline needs it (its own candidates only)."""
    section = config["baselines"]
    return canonical(
        {
            "max_train_images": section["max_train_images"],
            "subsample_seed": section["subsample_seed"],
            wildcards.baseline: section[wildcards.baseline],
        }
    )


def study_baselines():
    """Every classical baseline on every dataset of the study."""
    return expand(
        "results/baselines/{dataset}/{baseline}.json",
        dataset=STUDY["datasets"],
        baseline=BASELINE_NAMES,
    )


def study_manifests():
    return [f"resources/data/{dataset}/manifest.json" for dataset in STUDY["datasets"]]


def paper_sources():
    """The LaTeX sources both PDFs read: every .tex and .bib under paper/ but the templates, of
    which only the chosen one is an input (:func:`paper_template`)."""
    return sorted(
        str(p)
        for p in PAPER_DIR.rglob("*")
        if p.suffix in (".tex", ".bib") and PAPER_TEMPLATES not in p.parents
    )


def paper_template():
    """The chosen template's file and the files it reads."""
    return [
        str(p) for p in template_files(config["paper"]["template"], PAPER_TEMPLATES)
    ]
