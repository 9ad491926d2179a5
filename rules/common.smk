# Config validation, wildcard constraints and the input functions of every stage.
import dataclasses
import re
import sys
from pathlib import Path

import vitpeft.config as study_config
from vitpeft import compute
from vitpeft.baselines import BASELINE_NAMES
from vitpeft.data.sources import ARCHIVES, archive_md5, archive_url
from vitpeft.io import canonical
from vitpeft.methods import (
    METHOD_WILDCARD,
    INT_EXPORT_FAMILIES,
    method_config,
    method_wildcard,
)
from vitpeft.methods import METHODS as METHODS_BY_FAMILY
from vitpeft.submission import RUN_FILES as SUBMITTED_RUN_FILES
from vitpeft.analysis.seed_curves import SEED_CURVES
from vitpeft.paper import template_files

study_config.load(
    config
)  # schema + semantic checks; fails before any job with the key named
# The study's estimated compute and what its jobs ask a scheduler for, before anything runs.
STUDY_COMPUTE = compute.estimate_study(config)
print(compute.summary(config, STUDY_COMPUTE), file=sys.stderr)

STUDY = study_config.study(config)
METHODS = study_config.study_methods(config)
PAPER_DIR = Path(workflow.basedir) / "paper"
PAPER_TEMPLATES = PAPER_DIR / "templates"
RUN_DIR = "results/runs/{dataset}/{method}/{model}/seed{seed}"
SPLIT_FILES = ["train.npz", "val.npz", "test.npz", "manifest.json"]


wildcard_constraints:
    method=METHOD_WILDCARD,
    dataset=r"[a-z][a-z0-9]*",
    model=r"[a-z][a-z0-9_]*",
    seed=r"\d+",
    archive="|".join(re.escape(a.name) for a in ARCHIVES.values()),
    baseline="|".join(BASELINE_NAMES),


def dataset_files(dataset):
    return [f"resources/data/{dataset}/{name}" for name in SPLIT_FILES]


def dataset_archive(wildcards):
    """The downloaded archive a dataset is converted from, if it comes from one."""
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
    inputs = {"data": dataset_files(wildcards.dataset)}
    if not method_config(wildcards.method, config["methods"]).uses_pretrained_backbone:
        return inputs
    backbone = config["models"][wildcards.model]["backbone"]
    if backbone["source"] == "pretrain":
        inputs["backbone"] = backbone_files(wildcards.model)["weights"]
    elif backbone["source"] == "file":
        inputs["backbone"] = backbone["path"]
    return inputs


def export_inputs(wildcards):
    run_files = {
        name: f"{RUN_DIR}/{name}.{ext}".format(**wildcards)
        for name, ext in [
            ("metrics", "json"),
            ("config", "json"),
            ("provenance", "json"),  # where it trained: exact or tolerant top-1 tie
            ("checkpoint", "safetensors"),
        ]
    }
    return {**train_inputs(wildcards), **run_files}


def training_run(wildcards):
    return study_config.resolve_run(
        config,
        wildcards.model,
        wildcards.dataset,
        wildcards.method,
        int(wildcards.seed),
    )


def pretraining_run(wildcards):
    return study_config.pretrain_run(config, wildcards.model)


def job_resource(name, run_of=training_run):
    """A resource of the job whose run ``run_of(wildcards)`` gives (more on a retry)."""
    return lambda wildcards, attempt: compute.job_resources(
        config, run_of(wildcards), attempt
    )[name]


def run_config(wildcards):
    return canonical(training_run(wildcards).to_dict())


def pretrain_config(wildcards):
    return canonical(pretraining_run(wildcards).to_dict())


def dataset_spec(wildcards):
    return canonical(config["datasets"][wildcards.dataset])


def cell_run_dirs(method, dataset):
    """The folder of every run of a cell: all models x seeds."""
    # str.format, not expand: called for every cell by several rules, and expand is much slower
    return [
        RUN_DIR.format(dataset=dataset, method=method, model=model, seed=seed)
        for model in STUDY["models"]
        for seed in STUDY["seeds"]
    ]


def cell_runs(wildcards):
    """Each run of a cell: the metrics, provenance and export report that the cell reads."""
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
