"""The submission checklist: cells and seeds against the config, convergence, tuned rates inside
their grids, artifacts, provenance. A failed check names what failed and marks the paper a draft;
it never stops the build."""

import json

import pandas as pd
import pytest
from test_analysis import fake_run

from vitpeft.analysis import aggregate
from vitpeft.analysis.checklist import checklist, report, write_checklist

STUDY = {"models": ["deit_tiny"], "datasets": ["digits"], "seeds": [0, 1]}
METHODS = ["full", "lora_r8", "scratch"]
CLIMBING = {
    "converged": False,
    "val_top1_gain_last_window": 6.0,
    "convergence_window": 1,
    "convergence_tolerance": 10.0,
}


def runs_csv(tmp_path, cells, climbing=()):
    """The run table of ``cells``: method -> the seeds it finished. The runs named in ``climbing``
    (method, seed) have not converged: their last window gained 6 points, above a 1-point tolerance."""
    paths = [
        fake_run(
            tmp_path,
            method,
            seed,
            70.0 + seed,
            **(CLIMBING if (method, seed) in climbing else {}),
        )
        for method, seeds in cells.items()
        for seed in seeds
    ]
    frame = aggregate.runs_table(paths)
    aggregate.write_csv(frame, tmp_path / "runs.csv")
    return tmp_path / "runs.csv"


def write(tmp_path, csv, study=STUDY, artifacts=(), lr_choices=(), **transfer):
    out = {name: tmp_path / name for name in ("checklist.tex", "c.json", "draft.tex")}
    result = write_checklist(
        csv,
        study,
        METHODS,
        artifacts,
        out["checklist.tex"],
        out["c.json"],
        out["draft.tex"],
        lr_choices,
        **transfer,
    )
    return result, {name: " ".join(path.read_text().split()) for name, path in out.items()}


@pytest.fixture
def artifacts(tmp_path):
    figure, table = tmp_path / "paper" / "fig.pdf", tmp_path / "paper" / "table.tex"
    figure.parent.mkdir()
    figure.write_bytes(b"%PDF-1.4 ...")
    table.write_text(r"\begin{table}\end{table}")
    return [figure, table]


def test_a_complete_study_passes_and_the_checklist_says_what_was_checked(tmp_path, artifacts):
    csv = runs_csv(tmp_path, {method: [0, 1] for method in METHODS})
    result, written = write(tmp_path, csv, artifacts=artifacts)
    assert result["passed"] and result["failures"] == [] and result["cells"] == {"expected": 3, "complete": 3}
    assert json.loads((tmp_path / "c.json").read_text()) == result
    assert "DRAFT" not in written["draft.tex"] and r"\fbox" not in written["draft.tex"]
    tex = written["checklist.tex"]
    assert r"\item[$\checkmark$] \textbf{Cells.} 3 of 3 cells" in tex and "all 2 configured seed(s)" in tex
    assert r"\texttt{fig.pdf}, \texttt{table.tex}" in tex
    assert (
        "6 of 6 runs record git commit, config hash, torch version, timm version, peft version, data checksum"
        in tex
    )
    assert (
        r"1 commit(s) (\texttt{abc})" in tex
        and "0 run(s) were trained from a checkout with uncommitted" in tex
    )
    assert r"\item[$\checkmark$] \textbf{Convergence.} 6 of 6 runs converged" in tex
    assert "at most 10.0 points above that of the epochs before (windows of 1)" in tex
    assert result["convergence_criteria"] == [{"window": 1, "tolerance": 10.0}]
    assert r"\item[$\times$]" not in tex


def test_a_missing_cell_or_seed_fails_naming_it_and_marks_a_draft(tmp_path, artifacts, capsys):
    csv = runs_csv(tmp_path, {"full": [0, 1], "lora_r8": [1]})
    result, written = write(tmp_path, csv, artifacts=artifacts)
    assert not result["passed"]
    assert result["failures"] == [
        "cell lora_r8 on digits with deit_tiny: seed 0 missing",
        "cell scratch on digits with deit_tiny: no run",
    ]
    draft = written["draft.tex"]
    assert "DRAFT, not for submission: 2 check(s) of the submission checklist failed." in draft
    assert r"\item cell lora\_r8 on digits with deit\_tiny: seed 0 missing" in draft
    assert report(tmp_path / "c.json") == 1
    printed = capsys.readouterr().out
    assert "2 check(s) failed" in printed and "  - cell scratch on digits with deit_tiny: no run" in printed


def test_a_partial_study_builds_and_lists_what_is_missing(tmp_path, artifacts):
    csv = runs_csv(tmp_path, {"full": [0, 1], "lora_r8": [1]})
    study = {**STUDY, "partial": True}
    result, written = write(tmp_path, csv, study, artifacts)
    assert not result["passed"] and result["cells"] == {"expected": 3, "complete": 1}
    assert [(c["method"], c["missing_seeds"]) for c in result["incomplete_cells"]] == [
        ("lora_r8", [0]),
        ("scratch", [0, 1]),
    ]
    assert "DRAFT" in written["draft.tex"]
    tex = written["checklist.tex"]
    assert "These cells are missing or incomplete (the study is marked partial)" in tex
    assert r"\item[$\times$] \textbf{Cells.} 1 of 3 cells" in tex
    assert r"LoRA ($r{=}8$) on \texttt{digits} with \texttt{deit\_tiny}: 1 of 2 seeds (missing: 0)." in tex
    assert r"From scratch (full) on \texttt{digits} with \texttt{deit\_tiny}: 0 of 2 seeds." in tex


def test_missing_artifacts_and_provenance_are_reported(tmp_path, artifacts):
    runs = pd.read_csv(runs_csv(tmp_path, {method: [0, 1] for method in METHODS}))
    runs.loc[0, ["config_hash", "timm"]] = None
    artifacts[0].write_bytes(b"not a pdf")
    result = checklist(runs, STUDY, METHODS, [*artifacts, tmp_path / "absent.tex"])
    assert not result["passed"]
    assert [f["present"] for f in result["artifacts"]] == [False, True, False]
    assert result["provenance_gaps"] == [
        {"run_dir": runs.run_dir[0], "missing": ["config hash", "timm version"]}
    ]


def test_an_unconverged_run_fails_naming_it(tmp_path, artifacts):
    csv = runs_csv(tmp_path, {method: [0, 1] for method in METHODS}, climbing={("lora_r8", 1)})
    result, written = write(tmp_path, csv, artifacts=artifacts)
    assert result["failures"] == [
        "run lora_r8 on digits with deit_tiny, seed 1, not converged: its last window's mean val top-1 "
        "gained 6.00 points on the window before"
    ]
    assert "DRAFT, not for submission: 1 check(s)" in written["draft.tex"]
    assert r"\item[$\times$] \textbf{Convergence.} 5 of 6 runs converged" in written["checklist.tex"]


def test_a_run_without_a_convergence_record_fails(tmp_path, artifacts):
    runs = pd.read_csv(runs_csv(tmp_path, {method: [0, 1] for method in METHODS}))
    failed = checklist(runs.drop(columns="converged"), STUDY, METHODS, artifacts)["failures"]
    assert len(failed) == 6 and all(
        f.endswith("not converged: no convergence record in its metrics") for f in failed
    )
    runs.loc[2, ["converged", "val_top1_gain_last_window"]] = [False, None]  # too short for the window
    (failed,) = checklist(runs, STUDY, METHODS, artifacts)["failures"]
    assert failed.endswith("seed 0, not converged: 2 epoch(s): too few for two windows")


def choice(family, lr, rates, at_edge, extensions=0):
    """A tuning job's choice.json as vitpeft.tune writes it."""
    return {
        "family": family,
        "dataset": "digits",
        "model": "deit_tiny",
        "lr": lr,
        "grid": [{"lr": rate, "val_top1": 90.0} for rate in rates],
        "extensions": [{"lr": rate, "beyond": at_edge} for rate in rates[len(rates) - extensions :]],
        "at_edge": at_edge,
    }


def test_a_tuned_rate_still_at_an_edge_of_its_grid_fails_naming_it(tmp_path, artifacts):
    csv = runs_csv(tmp_path, {method: [0, 1] for method in METHODS})
    inside = choice("lora", 0.005, [0.002, 0.005, 0.01], None)
    edge = choice("full", 0.008, [0.001, 0.002, 0.004, 0.008], "highest", extensions=2)
    for name, record in (("inside.json", inside), ("edge.json", edge)):
        (tmp_path / name).write_text(json.dumps(record))
    result, written = write(
        tmp_path, csv, artifacts=artifacts, lr_choices=[tmp_path / "inside.json", tmp_path / "edge.json"]
    )
    assert result["failures"] == [
        "tuned rate of full on digits with deit_tiny: 0.008 is the highest of the rates tried "
        "(0.001, 0.002, 0.004, 0.008; 2 extension(s))"
    ]
    tex = written["checklist.tex"]
    assert r"\item[$\times$] \textbf{Tuning.} 1 of 2 tuned learning rate(s) lie inside" in tex
    assert "0.008, the highest of 0.001, 0.002, 0.004, 0.008 (2 extension(s))" in tex
    assert "DRAFT" in written["draft.tex"]


def test_a_partial_study_builds_and_lists_the_unconverged_runs(tmp_path, artifacts):
    csv = runs_csv(tmp_path, {method: [0, 1] for method in METHODS}, climbing={("full", 0), ("scratch", 1)})
    study = {**STUDY, "partial": True}
    result, written = write(tmp_path, csv, study, artifacts)
    assert not result["passed"] and result["converged_runs"] == 4
    assert [(r["method"], r["seed"], r["gain"]) for r in result["unconverged_runs"]] == [
        ("full", 0, 6.0),
        ("scratch", 1, 6.0),
    ]
    tex = written["checklist.tex"]
    assert r"\item[$\times$] \textbf{Convergence.} 4 of 6 runs converged" in tex
    assert (
        r"Full fine-tuning on \texttt{digits} with \texttt{deit\_tiny}, seed 0: the mean validation top-1 "
        "of its last window gained 6.00 points on the window before." in tex
    )


def test_the_transfer_checks_extra_seeds_are_checked_like_every_run(tmp_path, artifacts):
    """Full fine-tuning and scratch train seeds 2 and 3 for the transfer check alone: a missing one
    and an unconverged one fail, named, as a study seed's would."""
    study_runs = runs_csv(tmp_path, {method: [0, 1] for method in METHODS}).rename(tmp_path / "study.csv")
    transfer_runs = runs_csv(tmp_path, {"full": [0, 1, 2, 3], "scratch": [0, 1, 2]}, climbing={("full", 3)})
    result, written = write(
        tmp_path,
        study_runs,
        artifacts=artifacts,
        transfer_runs_csv=transfer_runs,
        transfer_seeds=[0, 1, 2, 3],
    )
    assert result["failures"] == [
        "transfer check: scratch on digits with deit_tiny: seed 3 missing",
        "run full on digits with deit_tiny, seed 3, not converged: its last window's mean val top-1 "
        "gained 6.00 points on the window before",
    ]
    assert result["runs"] == 6 + 3  # the study's runs and the extra seeds' (full 2, 3 and scratch 2)
    assert "DRAFT" in written["draft.tex"]
    assert (
        r"\item[$\times$] \textbf{Transfer check.} Full fine-tuning and scratch also train the transfer "
        r"check's other seeds (4 in all); missing: \begin{itemize} \item From scratch (full) on "
        r"\texttt{digits} with \texttt{deit\_tiny}: seed(s) 3." in written["checklist.tex"]
    )
    complete = runs_csv(tmp_path, {"full": [0, 1, 2, 3], "scratch": [0, 1, 2, 3]})
    assert write(
        tmp_path, study_runs, artifacts=artifacts, transfer_runs_csv=complete, transfer_seeds=[0, 1, 2, 3]
    )[0]["passed"]
