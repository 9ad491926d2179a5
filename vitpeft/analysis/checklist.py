"""The submission checklist, from what the pipeline produced: every cell with every seed, every
run converged, every figure and table, and complete provenance for every run.

A missing cell (or seed), or a run that has not converged by the config's criterion
(:mod:`vitpeft.convergence`, recorded in each run's metrics), fails the build here, naming it,
unless the study is marked ``partial``; a partial study's paper is built from the finished cells
and this checklist lists the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vitpeft.analysis.tables import render
from vitpeft.io import write_json

# What a run must record for its numbers to be traced back: code, config, packages and data.
PROVENANCE_FIELDS = {
    "git_commit": "git commit",
    "config_hash": "config hash",
    "torch": "torch version",
    "timm": "timm version",
    "peft": "peft version",
    "data_manifest_sha256": "data checksum",
}


class MissingCellsError(ValueError):
    """The run table lacks cells or seeds that the study configures."""


class UnconvergedRunsError(ValueError):
    """Runs of the study have not converged by the criterion they were judged by."""


def cell_coverage(runs: pd.DataFrame, study: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    """Every configured cell (dataset x model x method) with the configured seeds it has and lacks."""
    expected = sorted(study["seeds"])
    found = runs.groupby(["dataset", "model", "method"]).seed.apply(set).to_dict() if len(runs) else {}
    return [
        {
            "dataset": dataset,
            "model": model,
            "method": method,
            "seeds_expected": len(expected),
            "seeds_found": len(set(expected) & found.get((dataset, model, method), set())),
            "missing_seeds": [s for s in expected if s not in found.get((dataset, model, method), set())],
        }
        for dataset in study["datasets"]
        for model in study["models"]
        for method in methods
    ]


def check_cells(coverage: list[dict[str, Any]], partial: bool) -> list[dict[str, Any]]:
    """The incomplete cells; raises :class:`MissingCellsError` naming them unless ``partial``."""
    incomplete = [c for c in coverage if c["missing_seeds"]]
    if incomplete and not partial:
        named = "; ".join(
            f"{c['method']} on {c['dataset']} with {c['model']} "
            + (
                "(no run)"
                if c["seeds_found"] == 0
                else f"(seed {', '.join(map(str, c['missing_seeds']))} missing)"
            )
            for c in incomplete
        )
        raise MissingCellsError(
            f"{len(incomplete)} of {len(coverage)} cells of the study are missing or incomplete: {named}. "
            "Run them, or mark the study `partial: true` in the config to build the paper without them."
        )
    return incomplete


def unconverged_runs(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Runs whose metrics do not record ``converged`` as true (a run that lacks the record too)."""
    flagged = []
    for _, run in runs.iterrows():
        verdict = run.get("converged")  # read back from CSV: True, False, or NaN where not recorded
        recorded = verdict is not None and not pd.isna(verdict)
        if recorded and bool(verdict):
            continue
        flagged.append(
            {
                "method": run["method"],
                "dataset": run["dataset"],
                "model": run["model"],
                "seed": int(run["seed"]),
                "run_dir": run["run_dir"],
                "recorded": recorded,
                "gain": None
                if pd.isna(run.get("val_top1_gain_last_window"))
                else run["val_top1_gain_last_window"],
                "epochs": int(run["epochs"]),
            }
        )
    return flagged


def criteria(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The convergence criteria the runs were judged by (one, unless the config changed between runs)."""
    columns = ["convergence_window", "convergence_tolerance"]
    if not set(columns) <= set(runs):
        return []
    judged = runs[columns].dropna().drop_duplicates().sort_values(columns)
    return [{"window": int(w), "tolerance": float(t)} for w, t in judged.itertuples(index=False)]


def check_convergence(unconverged: list[dict[str, Any]], total: int, partial: bool) -> None:
    """Raise :class:`UnconvergedRunsError` naming the runs that have not converged, unless ``partial``."""
    if not unconverged or partial:
        return
    named = "; ".join(
        f"{r['method']} on {r['dataset']} with {r['model']}, seed {r['seed']} "
        + (
            "(no convergence record in its metrics)"
            if not r["recorded"]
            else f"(its last window's mean val top-1 gained {r['gain']:.2f} points on the window before)"
            if r["gain"] is not None
            else f"({r['epochs']} epoch(s): too few for two windows)"
        )
        for r in unconverged
    )
    raise UnconvergedRunsError(
        f"{len(unconverged)} of {total} runs have not converged: {named}. Train longer (or change the "
        "convergence criterion in the config), or mark the study `partial: true` to build the paper anyway."
    )


def provenance_gaps(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Runs that lack any of ``PROVENANCE_FIELDS``, with what they lack."""
    gaps = []
    for _, run in runs.iterrows():
        missing = [label for field, label in PROVENANCE_FIELDS.items() if pd.isna(run.get(field))]
        if missing:
            gaps.append({"run_dir": run["run_dir"], "missing": missing})
    return gaps


def artifact_present(path: str | Path) -> bool:
    """A figure or table counts if it is a non-empty file; a figure must also be a PDF."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    return path.suffix != ".pdf" or path.read_bytes()[:5] == b"%PDF-"


def checklist(
    runs: pd.DataFrame, study: dict[str, Any], methods: list[str], artifacts: list[str | Path]
) -> dict[str, Any]:
    """The checklist's content; raises :class:`MissingCellsError` as :func:`check_cells` does, then
    :class:`UnconvergedRunsError` as :func:`check_convergence` does."""
    coverage = cell_coverage(runs, study, methods)
    partial = bool(study.get("partial", False))
    incomplete = check_cells(coverage, partial)
    unconverged = unconverged_runs(runs)
    check_convergence(unconverged, len(runs), partial)
    gaps = provenance_gaps(runs)
    files = [{"name": Path(p).name, "present": artifact_present(p)} for p in artifacts]
    artifacts_ok = all(f["present"] for f in files)
    dirty = int(runs["git_dirty"].fillna(False).astype(bool).sum()) if "git_dirty" in runs else 0
    return {
        "partial": partial,
        "cells": {"expected": len(coverage), "complete": len(coverage) - len(incomplete)},
        "seeds_per_cell": len(study["seeds"]),
        "incomplete_cells": incomplete,
        "convergence_criteria": criteria(runs),
        "converged_runs": len(runs) - len(unconverged),
        "unconverged_runs": unconverged,
        "artifacts": files,
        "artifacts_ok": artifacts_ok,
        "runs": len(runs),
        "provenance_fields": list(PROVENANCE_FIELDS.values()),
        "provenance_gaps": gaps,
        "commits": sorted(runs["git_commit"].dropna().unique().tolist()) if "git_commit" in runs else [],
        "dirty_runs": dirty,
        "passed": not incomplete and not unconverged and not gaps and artifacts_ok,
    }


def write_checklist(
    runs_csv: str | Path,
    study: dict[str, Any],
    methods: list[str],
    artifacts: list[str | Path],
    out_tex: str | Path,
    out_json: str | Path,
) -> dict[str, Any]:
    """The checklist rule: check the study's results and write the checklist as LaTeX and JSON."""
    result = checklist(pd.read_csv(runs_csv), study, methods, artifacts)
    write_json(out_json, result)
    render("checklist.tex.j2", out_tex, check=result)
    return result
