"""The VTAB-1k table: every task, the three group means and the mean of the group means, for the
study's methods and beside the published rows, recomputed over the tasks the study ran."""

import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO

from vitpeft import config as study_config
from vitpeft import paper
from vitpeft.analysis import published, vtab
from vitpeft.data.sources import VTAB_TASKS

FULL, LINEAR, LORA = vtab.VTAB_PUBLISHED


def planted_cells(task_of, top1_of, methods=("full", "lora_r8"), model="vit_b16_in21k"):
    """One cell per (dataset, method): its mean test top-1 from ``top1_of(task, method)``, 3 seeds."""
    rows = [
        {
            "dataset": dataset,
            "model": model,
            "method": method,
            "n_seeds": 3,
            "test_top1_mean": top1_of(task, method),
            "test_top1_ci_high": top1_of(task, method) + 1.0,
        }
        for dataset, task in task_of.items()
        for method in methods
    ]
    return pd.DataFrame(rows)


def test_the_published_rows_give_the_means_their_sources_print():
    """VPT's and NOAH's rows as FacT prints them: group means 75.9 / 83.4 / 47.6 for full fine-tuning
    (VPT's Table 1), and the mean of the group means 74.60 for LoRA (as DyT's Table 3 prints it)."""
    tasks = list(VTAB_TASKS)
    full = vtab.summary(FULL.by_task(), tasks)
    assert [round(full["groups"][g], 1) for g in ("natural", "specialized", "structured")] == [
        75.9,
        83.4,
        47.6,
    ]
    assert round(vtab.summary(LORA.by_task(), tasks)["mean"], 2) == 74.60
    assert LINEAR.by_task()["cifar"] == 64.4  # as FacT prints it (see vitpeft.analysis.vtab)


def test_group_means_and_the_mean_cover_only_the_tasks_the_study_ran():
    task_of = {"cifar": "cifar", "eurosat": "eurosat", "kitti": "kitti", "dmlab": "dmlab"}
    cells = planted_cells(
        task_of, lambda task, method: {"cifar": 60.0, "eurosat": 90.0, "kitti": 70.0, "dmlab": 40.0}[task]
    )
    table = vtab.vtab_table(cells, task_of)
    assert [t["name"] for t in table["tasks"]] == ["cifar", "eurosat", "dmlab", "kitti"]  # VTAB's order
    assert (
        table["group_sizes"] == {"natural": 1, "specialized": 1, "structured": 2} and not table["all_tasks"]
    )
    (full, lora) = table["ours"]
    assert full["method"] == "full" and full["top1"] == [60.0, 90.0, 40.0, 70.0]
    assert full["groups"] == {"natural": 60.0, "specialized": 90.0, "structured": 55.0}
    assert full["mean"] == pytest.approx((60 + 90 + 55) / 3)  # the mean of the group means
    published_full = table["published"][0]
    assert published_full["top1"] == [68.9, 95.7, 41.7, 65.5]
    assert published_full["groups"]["structured"] == pytest.approx((41.7 + 65.5) / 2)


def test_a_missing_cell_leaves_its_group_mean_and_the_mean_empty():
    task_of = {"cifar": "cifar", "dtd": "dtd", "eurosat": "eurosat"}
    cells = planted_cells(task_of, lambda task, method: 50.0)
    cells = cells[~((cells.dataset == "dtd") & (cells.method == "lora_r8"))]
    lora = vtab.vtab_table(cells, task_of)["ours"][1]
    assert lora["top1"] == [50.0, None, 50.0]
    assert lora["groups"] == {"natural": None, "specialized": 50.0, "structured": None}
    assert lora["mean"] is None
    cells = cells[cells.dataset != "eurosat"]  # a task no cell has reached yet keeps its column
    table = vtab.vtab_table(cells, task_of)
    assert [t["name"] for t in table["tasks"]] == ["cifar", "dtd", "eurosat"]
    assert table["ours"][0]["top1"] == [50.0, 50.0, None] and table["ours"][0]["mean"] is None


def test_a_study_without_vtab_tasks_has_no_vtab_table(tmp_path):
    cells = planted_cells({"digits": "kitti"}, lambda task, method: 90.0)
    assert vtab.vtab_table(cells, {}) is None
    cells.to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame(columns=["dataset", "model", "method", "baseline", "diff_mean", "diff_ci_high"]).to_csv(
        tmp_path / "comparisons.csv", index=False
    )
    published.write_published(tmp_path / "cells.csv", tmp_path / "comparisons.csv", tmp_path / "out.tex", {})
    assert "tab:vtab" not in (tmp_path / "out.tex").read_text()


def test_the_vtab_study_maps_its_datasets_to_the_nineteen_tasks():
    config = study_config.load({**yaml.safe_load((REPO / "config.yaml").read_text()), "study": "vtab"})
    task_of = study_config.vtab_tasks(config)
    assert len(task_of) == 19 and set(task_of.values()) == set(VTAB_TASKS)
    assert task_of["flowers102"] == "oxford_flowers102"
    assert (
        study_config.vtab_tasks(study_config.load(yaml.safe_load((REPO / "config.yaml").read_text()))) == {}
    )


def test_the_nineteen_task_table_typesets_beside_the_published_rows(tmp_path):
    """The published rule's table for a whole VTAB-1k study, typeset: every task's label and the
    sources' rows are in the PDF, and the published means are the ones recomputed from them."""
    task_of = {task: task for task in VTAB_TASKS}
    cells = planted_cells(
        task_of, lambda task, method: 50.0 + len(task), methods=("full", "linear", "lora_r8")
    )
    cells.to_csv(tmp_path / "cells.csv", index=False)
    pd.DataFrame(columns=["dataset", "model", "method", "baseline", "diff_mean", "diff_ci_high"]).to_csv(
        tmp_path / "comparisons.csv", index=False
    )
    published.write_published(
        tmp_path / "cells.csv", tmp_path / "comparisons.csv", tmp_path / "published.tex", task_of
    )
    tex = (tmp_path / "published.tex").read_text()
    assert "\\label{tab:vtab}" in tex and "\\label{tab:published}" in tex
    main = tmp_path / "main.tex"
    main.write_text(
        "\\input{template}\n\\usepackage{natbib}\n\\title{A study}\n\\begin{document}\n"
        "\\PaperFrontMatter{An abstract.}\n\\input{published.tex}\n\\end{document}\n"
    )
    (tmp_path / "refs.bib").write_text((REPO / "paper" / "refs.bib").read_text())
    pdf = tmp_path / "main.pdf"
    paper.build_pdf(
        main, tmp_path, pdf, tmp_path / "latexmk.log", template=paper.TEMPLATE_DIR / "article.tex"
    )
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    for task in VTAB_TASKS.values():
        assert task.label in text, task.label
    assert "74.6" in text and "LoRA" in text  # NOAH's row: the mean of its group means
