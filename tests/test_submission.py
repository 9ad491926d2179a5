import hashlib
import tarfile

import pandas as pd

from vitpeft.io import write_json
from vitpeft.submission import best_runs, build_submission


def finished_run(root, method, seed, val_top1):
    run_dir = root / "runs" / "digits" / method / "deit_tiny" / f"seed{seed}"
    for name in ("config.json", "metrics.json", "provenance.json", "export/report.json"):
        write_json(run_dir / name, {"seed": seed})
    (run_dir / "checkpoint.safetensors").write_bytes(b"weights %d" % seed)
    return {
        "dataset": "digits",
        "method": method,
        "model": "deit_tiny",
        "seed": seed,
        "val_top1": val_top1,
        "test_top1": 100 - val_top1,
        "run_dir": str(run_dir),
    }


def study(tmp_path):
    rows = [finished_run(tmp_path, "lora_r8", s, v) for s, v in enumerate([70.0, 80.0, 75.0])]
    rows += [finished_run(tmp_path, "full", s, v) for s, v in enumerate([90.0, 85.0, 88.0])]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    for name in ("paper.pdf", "supplement.pdf", "macros.tex", "requirements.txt"):
        (tmp_path / name).write_text(name)
    write_json(tmp_path / "data" / "digits" / "manifest.json", {"classes": 10})
    write_json(tmp_path / "checklist.json", {"passed": True, "failures": []})
    return dict(
        checklist_json=tmp_path / "checklist.json",
        paper_pdf=tmp_path / "paper.pdf",
        supplement_pdf=tmp_path / "supplement.pdf",
        generated=[tmp_path / "macros.tex"],
        tables=[tmp_path / "runs.csv"],
        environment=[tmp_path / "requirements.txt"],
        manifests=[tmp_path / "data" / "digits" / "manifest.json"],
        runs_csv=tmp_path / "runs.csv",
    )


def test_best_runs_pick_by_validation_not_test(tmp_path):
    study(tmp_path)
    best = best_runs(tmp_path / "runs.csv")
    assert best[["method", "seed"]].values.tolist() == [["full", 0], ["lora_r8", 1]]


def test_archive_holds_everything_with_verifiable_checksums_and_is_deterministic(tmp_path):
    inputs = study(tmp_path)
    sums = build_submission(tmp_path / "a.tar.gz", config={"study": "demo"}, **inputs)
    build_submission(tmp_path / "b.tar.gz", config={"study": "demo"}, **inputs)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        names = archive.getnames()
        listing = archive.extractfile("submission/SHA256SUMS").read().decode().splitlines()
        for line in listing:
            digest, name = line.split("  ")
            assert hashlib.sha256(archive.extractfile(f"submission/{name}").read()).hexdigest() == digest
    assert len(listing) == len(sums) == len(names) - 1
    for expected in (
        "submission/paper.pdf",
        "submission/supplement.pdf",
        "submission/paper_parts/macros.tex",
        "submission/tables/runs.csv",
        "submission/tables/checklist.json",
        "submission/environment/requirements.txt",
        "submission/environment/config.resolved.yaml",
        "submission/data/digits/manifest.json",
        "submission/best_runs/digits/lora_r8/deit_tiny/seed1/checkpoint.safetensors",
        "submission/best_runs/digits/full/deit_tiny/seed0/export/report.json",
    ):
        assert expected in names, expected
    assert not any("lora_r8/deit_tiny/seed0" in n for n in names)  # only the best seed of a cell


def test_an_incomplete_best_run_is_named(tmp_path):
    import pytest

    inputs = study(tmp_path)
    (tmp_path / "runs" / "digits" / "full" / "deit_tiny" / "seed0" / "checkpoint.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="best run of full on digits is incomplete"):
        build_submission(tmp_path / "a.tar.gz", **inputs)
    assert not (tmp_path / "a.tar.gz").exists()


def test_a_failed_checklist_builds_no_archive_and_names_the_checks(tmp_path):
    import pytest

    from vitpeft.submission import FailedChecklistError

    inputs = study(tmp_path)
    failed = ["run linear on digits with m, seed 0, not converged: ...", "tuned rate of full on digits ..."]
    write_json(inputs["checklist_json"], {"passed": False, "failures": failed})
    with pytest.raises(FailedChecklistError) as error:
        build_submission(tmp_path / "a.tar.gz", **inputs)
    assert "2 check(s) failed" in str(error.value) and all(line in str(error.value) for line in failed)
    assert not (tmp_path / "a.tar.gz").exists()


def test_the_archive_holds_the_source_at_the_commit_that_built_it(tmp_path):
    """`tar tzf` lists the repository's tracked tree under source/, as `git archive` gives it, and
    source/COMMIT names the commit (and says when the working tree had uncommitted changes)."""
    import subprocess

    repository = tmp_path / "repo"
    (repository / "vitpeft").mkdir(parents=True)
    (repository / "vitpeft" / "train.py").write_text("print('train')\n")
    (repository / "Snakefile").write_text("rule all:\n")
    (repository / "untracked.txt").write_text("not in git")
    git = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "vitpeft", "Snakefile"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    sums = build_submission(tmp_path / "a.tar.gz", source_repository=repository, **study(tmp_path))
    with tarfile.open(tmp_path / "a.tar.gz") as archive:
        names = set(archive.getnames())
        assert archive.extractfile("submission/source/vitpeft/train.py").read() == b"print('train')\n"
        assert archive.extractfile("submission/source/COMMIT").read().decode() == f"{commit}\n"
    assert {"submission/source/Snakefile", "submission/source/COMMIT"} <= names
    assert "submission/source/untracked.txt" not in names and "source/Snakefile" in sums
    (repository / "Snakefile").write_text("rule all:\n    input: []\n")  # uncommitted
    build_submission(tmp_path / "b.tar.gz", source_repository=repository, **study(tmp_path))
    with tarfile.open(tmp_path / "b.tar.gz") as archive:
        assert "uncommitted changes" in archive.extractfile("submission/source/COMMIT").read().decode()
