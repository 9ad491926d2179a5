"""The submission checklist, from what the pipeline produced: every cell with every seed, every
run converged, every tuned learning rate inside the rates tried, every figure and table, and
complete provenance for every run.

A failed check does not stop the build: the paper and its supplement are built as a draft, marked
DRAFT on their first page with the failed checks listed there (``draft.tex``) and in the
supplement's checklist. ``make paper`` then exits non-zero naming them (``python -m
vitpeft.analysis.checklist``), and the submission archive refuses to build. A study marked
``partial`` is built from its finished cells; the missing ones are failed checks like any other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from vitpeft.analysis.tables import render
from vitpeft.io import read_json, write_json

# What a run must record for its numbers to be traced back: code, config, packages and data.
PROVENANCE_FIELDS = {
    "git_commit": "git commit",
    "config_hash": "config hash",
    "torch": "torch version",
    "timm": "timm version",
    "peft": "peft version",
    "data_manifest_sha256": "data checksum",
}


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


def missing_transfer_runs(
    transfer_runs: pd.DataFrame, study: dict[str, Any], transfer_seeds: list[int]
) -> list[dict[str, Any]]:
    """The transfer check's extra seeds (beyond the study's, which :func:`cell_coverage` counts)
    that full fine-tuning or scratch lacks, per dataset x model."""
    from vitpeft.config import TRANSFER_BASELINE, TRANSFER_REFERENCE

    extra = [s for s in sorted(transfer_seeds) if s not in study["seeds"]]
    found = set(
        zip(transfer_runs.dataset, transfer_runs.model, transfer_runs.method, transfer_runs.seed, strict=True)
    )
    return [
        {"dataset": dataset, "model": model, "method": method, "missing_seeds": lacking}
        for dataset in study["datasets"]
        for model in study["models"]
        for method in (TRANSFER_REFERENCE, TRANSFER_BASELINE)
        if (lacking := [s for s in extra if (dataset, model, method, s) not in found])
    ]


def incomplete_cells(coverage: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells that lack any configured seed."""
    return [c for c in coverage if c["missing_seeds"]]


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


def edge_choices(lr_choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tuning choices still at an edge of the rates they tried (:mod:`vitpeft.tune`)."""
    return [
        {
            "family": c["family"],
            "dataset": c["dataset"],
            "model": c["model"],
            "lr": c["lr"],
            "edge": c["at_edge"],
            "rates": sorted(entry["lr"] for entry in c["grid"]),
            "extensions": len(c.get("extensions", [])),
        }
        for c in lr_choices
        if c.get("at_edge")
    ]


def failures(check: dict[str, Any]) -> list[str]:
    """One line per failed check, naming what failed: what the draft mark, the supplement and
    ``make paper`` list."""
    lines = []
    for c in check["incomplete_cells"]:
        seeds = (
            "no run" if c["seeds_found"] == 0 else f"seed {', '.join(map(str, c['missing_seeds']))} missing"
        )
        lines.append(f"cell {c['method']} on {c['dataset']} with {c['model']}: {seeds}")
    for c in check["missing_transfer_runs"]:
        lines.append(
            f"transfer check: {c['method']} on {c['dataset']} with {c['model']}: "
            f"seed {', '.join(map(str, c['missing_seeds']))} missing"
        )
    for r in check["unconverged_runs"]:
        if not r["recorded"]:
            why = "no convergence record in its metrics"
        elif r["gain"] is not None:
            why = f"its last window's mean val top-1 gained {r['gain']:.2f} points on the window before"
        else:
            why = f"{r['epochs']} epoch(s): too few for two windows"
        lines.append(
            f"run {r['method']} on {r['dataset']} with {r['model']}, seed {r['seed']}, not converged: {why}"
        )
    for e in check["edge_choices"]:
        lines.append(
            f"tuned rate of {e['family']} on {e['dataset']} with {e['model']}: {e['lr']:g} is the {e['edge']} "
            f"of the rates tried ({', '.join(f'{lr:g}' for lr in e['rates'])}; {e['extensions']} extension(s))"
        )
    lines += [f"missing figure or table {f['name']}" for f in check["artifacts"] if not f["present"]]
    lines += [
        f"provenance of {g['run_dir']} lacks {', '.join(g['missing'])}" for g in check["provenance_gaps"]
    ]
    return lines


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
    runs: pd.DataFrame,
    study: dict[str, Any],
    methods: list[str],
    artifacts: list[str | Path],
    lr_choices: list[dict[str, Any]] = (),
    transfer_runs: pd.DataFrame | None = None,
    transfer_seeds: list[int] = (),
) -> dict[str, Any]:
    """The checklist's content: what was checked, and ``failures`` (:func:`failures`).

    ``transfer_runs`` are the transfer check's runs; those of its extra seeds (``transfer_seeds``
    beyond the study's) are checked for convergence and provenance like every other run."""
    coverage = cell_coverage(runs, study, methods)
    incomplete = incomplete_cells(coverage)
    transfer_runs = runs.iloc[:0] if transfer_runs is None else transfer_runs
    missing_transfer = missing_transfer_runs(transfer_runs, study, list(transfer_seeds))
    extra = transfer_runs[~transfer_runs.run_dir.isin(runs.run_dir)]
    if len(extra):
        runs = pd.concat([runs, extra], ignore_index=True)
    unconverged = unconverged_runs(runs)
    files = [{"name": Path(p).name, "present": artifact_present(p)} for p in artifacts]
    dirty = int(runs["git_dirty"].fillna(False).astype(bool).sum()) if "git_dirty" in runs else 0
    check = {
        "partial": bool(study.get("partial", False)),
        "cells": {"expected": len(coverage), "complete": len(coverage) - len(incomplete)},
        "seeds_per_cell": len(study["seeds"]),
        "incomplete_cells": incomplete,
        "transfer_seeds": len(transfer_seeds),
        "missing_transfer_runs": missing_transfer,
        "convergence_criteria": criteria(runs),
        "converged_runs": len(runs) - len(unconverged),
        "unconverged_runs": unconverged,
        "tuning_jobs": len(lr_choices),
        "edge_choices": edge_choices(list(lr_choices)),
        "artifacts": files,
        "artifacts_ok": all(f["present"] for f in files),
        "runs": len(runs),
        "provenance_fields": list(PROVENANCE_FIELDS.values()),
        "provenance_gaps": provenance_gaps(runs),
        "commits": sorted(runs["git_commit"].dropna().unique().tolist()) if "git_commit" in runs else [],
        "dirty_runs": dirty,
    }
    check["failures"] = failures(check)
    check["passed"] = not check["failures"]
    return check


def write_checklist(
    runs_csv: str | Path,
    study: dict[str, Any],
    methods: list[str],
    artifacts: list[str | Path],
    out_tex: str | Path,
    out_json: str | Path,
    out_draft: str | Path,
    lr_choices: list[str | Path] = (),
    transfer_runs_csv: str | Path | None = None,
    transfer_seeds: list[int] = (),
) -> dict[str, Any]:
    """The checklist rule: check the study's results and write the checklist as LaTeX and JSON,
    and the first page's draft mark (empty when every check passed)."""
    result = checklist(
        pd.read_csv(runs_csv),
        study,
        methods,
        artifacts,
        [read_json(p) for p in lr_choices],
        transfer_runs=pd.read_csv(transfer_runs_csv) if transfer_runs_csv else None,
        transfer_seeds=transfer_seeds,
    )
    write_json(out_json, result)
    render("checklist.tex.j2", out_tex, check=result)
    render("draft.tex.j2", out_draft, check=result)
    for line in result["failures"]:
        print(f"checklist: FAILED {line}", file=sys.stderr)
    return result


def report(checklist_json: str | Path) -> int:
    """What ``make paper`` prints at its end: the failed checks, and 1 if any failed, else 0."""
    result = read_json(checklist_json)
    if result["passed"]:
        print(f"checklist: every check passed ({checklist_json})")
        return 0
    print(f"checklist: {len(result['failures'])} check(s) failed; paper.pdf and supplement.pdf are DRAFTS:")
    for line in result["failures"]:
        print(f"  - {line}")
    return 1


if __name__ == "__main__":
    sys.exit(report(sys.argv[1] if len(sys.argv) > 1 else "results/analysis/checklist.json"))
