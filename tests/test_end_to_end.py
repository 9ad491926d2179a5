"""The whole DAG on the tiny config, in a temporary folder: data to paper.pdf."""

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_CONFIG, snakemake_command

from vitpeft.paper import overfull_boxes


def job_stats(plan: str) -> dict[str, str]:
    """The job counts of a dry run's "Job stats" table."""
    return dict(re.findall(r"^(\w+)\s+(\d+)$", plan.split("Job stats:")[1].split("Reasons")[0], re.M))


def copy_of_the_workflow(target: Path) -> Path:
    """The repository's tracked files, copied to ``target`` (not .venv, results, ...)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.mark.e2e
def test_tiny_study_builds_a_paper_with_the_runs_numbers(tiny_study, tmp_path):
    cmd = snakemake_command(tiny_study, TINY_CONFIG, "--cores", "2")
    run_dir = tiny_study / "results" / "runs" / "digits" / "lora_r8" / "deit_tiny" / "seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in ("config.json", "provenance.json", "checkpoint.safetensors", "train.log", "export.log"):
        assert (run_dir / name).exists(), name
    for name in ("benchmark.tsv", "export_benchmark.tsv"):  # a job's, for all its seeds
        assert (run_dir.parent / name).exists(), name
    assert "img/s" in (run_dir / "train.log").read_text()

    for method in ("lora_r8", "qalora4_r8"):  # every run is exported and checked
        export_dir = run_dir.parents[2] / method / "deit_tiny" / "seed0" / "export"
        export = json.loads((export_dir / "report.json").read_text())
        assert export["passed"] and (export_dir / "model.onnx").exists()
        assert export["int"]["onnx_weight_types"] == {"UINT4": 8}  # the naive route's too
        assert export["logits"]["int_onnx_vs_int"]["passed"]
    assert export["test_top1"]["unmerged"] == export["test_top1"]["int"]  # QA-LoRA's exact merge

    summary = pd.read_csv(tiny_study / "results" / "lora_r8_digits" / "summary.csv")
    assert summary[["model", "seed"]].values.tolist() == [["deit_tiny", 0]]
    assert summary.test_top1.iloc[0] == pytest.approx(metrics["test_top1"])
    assert summary.export_top1_onnx.iloc[0] == pytest.approx(metrics["test_top1"])

    text = subprocess.run(
        ["pdftotext", str(tiny_study / "paper.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{metrics['test_top1']:.1f}" in text  # the results table's mean over the one seed
    latex_log = (tiny_study / "results" / "logs" / "paper.tex.log").read_text(errors="replace")
    assert max(overfull_boxes(latex_log), default=0.0) <= 10.0  # the article template too
    assert "Tiny end-to-end test of the vitpeft pipeline" in text
    assert "supplementary material" in pdf_text(tiny_study / "paper.pdf")
    for name in ("accuracy_vs_params", "accuracy_vs_memory", "adalora_ranks", "resources", "rank_ablation"):
        assert (tiny_study / "results" / "paper" / f"{name}.pdf").read_bytes().startswith(b"%PDF-"), name
    checklist = json.loads((tiny_study / "results" / "analysis" / "checklist.json").read_text())
    assert checklist["cells"] == {"expected": 7, "complete": 7} and checklist["provenance_gaps"] == []
    assert checklist["passed"]

    # the submission package bundles the paper and its supplement with what is behind them: only
    # their own jobs run
    result = subprocess.run([*cmd, "results/submission.tar.gz"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    assert sorted(re.findall(r"^(?:local)?rule (\w+):", result.stdout + result.stderr, re.M)) == [
        "submission",
        "supplement",
        "supplement_figures",
    ]
    supplement = pdf_text(tiny_study / "supplement.pdf")
    assert f"{metrics['test_top1']:.2f}" in supplement  # the per-run table
    for heading in ("Every run", "Training curves of every seed", "Submission checklist"):
        assert heading in supplement, heading
    with tarfile.open(tiny_study / "results" / "submission.tar.gz") as archive:
        names = archive.getnames()
    assert {
        "submission/paper.pdf",
        "submission/supplement.pdf",
        "submission/SHA256SUMS",
        "submission/tables/runs.csv",
    } <= set(names)
    assert "submission/best_runs/digits/qalora4_r8/deit_tiny/seed0/checkpoint.safetensors" in names

    again = subprocess.run([*cmd, "-n", "paper.pdf"], capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr

    # Changing one method's hyperparameter reruns only that method's runs, then the analysis. The
    # rewritten YAML also has every key reordered (safe_dump sorts them), which must rerun nothing.
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["methods"]["lora"]["lr"] = 3.0e-3
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config))
    changed = snakemake_command(tiny_study, tmp_path / "changed.yaml", "-n", "paper.pdf")
    plan = subprocess.run(changed, capture_output=True, text=True, timeout=120).stdout
    blocks = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", plan, re.M)
    trained = [re.search(r"wildcards: (.*)", body)[1] for rule, body in blocks if rule == "train"]
    assert trained == ["dataset=digits, method=lora_r8, model=deit_tiny"]
    assert job_stats(plan) == {
        "train": "1",
        "export": "1",
        "cell": "1",
        "aggregate": "1",
        "stats": "1",
        "figures": "1",
        "findings": "1",
        "published": "1",
        "tables": "1",
        "checklist": "1",
        "paper": "1",
        "total": "11",
    }

    # Changing only the paper's prose reruns only LaTeX. Snakemake compares the checksums of small
    # inputs, so the file's content must change (a new mtime alone reruns nothing). The edit is made
    # in a copy of the workflow, run on a copy of the study: neither the checkout nor the shared
    # study changes. The copy's paper sources have new paths, so its paper is built once first.
    workflow = copy_of_the_workflow(tmp_path / "workflow")
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, symlinks=True)
    from_copy = snakemake_command(study, TINY_CONFIG, snakefile=workflow / "Snakefile")
    built = subprocess.run(
        [*from_copy, "--cores", "1", "paper.pdf"], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-5000:]
    assert re.findall(r"^(?:local)?rule (\w+):", built.stdout + built.stderr, re.M) == ["paper"]
    prose = workflow / "paper" / "sections" / "introduction.tex"
    prose.write_text(prose.read_text() + "\n% a prose-only edit\n")
    plan = subprocess.run([*from_copy, "-n", "paper.pdf"], capture_output=True, text=True, timeout=120).stdout
    assert job_stats(plan) == {"paper": "1", "total": "1"}


# The body font each template typesets in, as pdffonts names it (after the subset prefix).
TEMPLATE_FONTS = {"ieee": "NimbusRomNo9L-Regu", "acm": "LinLibertineT"}


def pdf_text(pdf: Path) -> str:
    """The PDF's text with hyphenated line breaks joined and all whitespace one space."""
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(text.replace("-\n", "").split())


def pdf_pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M)[1])


def pdf_fonts(pdf: Path) -> list[dict[str, str]]:
    """pdffonts' table: each font's name (without its subset prefix), type and whether embedded."""
    lines = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
    fonts = []
    for line in lines.splitlines()[2:]:
        # name, type (one or two words), encoding, then the emb/sub/uni flags and the object ID
        name, *middle, emb, _sub, _uni, _obj, _gen = line.split()
        fonts.append({"name": name.split("+")[-1], "type": " ".join(middle[:-1]), "embedded": emb})
    return fonts


@pytest.mark.e2e
@pytest.mark.parametrize("template", ["ieee", "acm"])
def test_the_paper_and_its_supplement_build_in_a_conference_template(tiny_study, tmp_path, template):
    """From the finished tiny study, another template reruns only LaTeX: two-column pages in the
    template's own embedded fonts, no line or table sticking out more than 10 pt, and an edit of
    the template's file (not of another template) reruns the paper and supplement alone."""
    workflow = copy_of_the_workflow(tmp_path / "workflow")
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, symlinks=True)
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["paper"] = {"template": template}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_command(study, tmp_path / "config.yaml", snakefile=workflow / "Snakefile")
    built = subprocess.run(
        [*cmd, "--cores", "1", "paper.pdf", "supplement.pdf"], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-5000:]
    ran = re.findall(r"^(?:local)?rule (\w+):", built.stdout + built.stderr, re.M)
    # the supplement's figures exist already if an earlier test built the shared study's supplement
    assert set(ran) - {"supplement_figures"} == {"paper", "supplement"} and len(ran) == len(set(ran))

    # two columns set the same paper on fewer pages than the one-column article of the tiny study
    assert 1 < pdf_pages(study / "paper.pdf") < pdf_pages(tiny_study / "paper.pdf")
    assert pdf_pages(study / "supplement.pdf") >= 2
    for name in ("paper", "supplement"):
        fonts = pdf_fonts(study / f"{name}.pdf")
        assert all(f["embedded"] == "yes" for f in fonts), fonts
        assert not [f for f in fonts if f["type"].startswith("Type 3")], fonts  # no bitmap fonts
        assert TEMPLATE_FONTS[template] in {f["name"] for f in fonts}, fonts
        latex_log = (study / "results" / "logs" / f"{name}.tex.log").read_text(errors="replace")
        assert max(overfull_boxes(latex_log), default=0.0) <= 10.0, name
    assert "supplementary material" in pdf_text(study / "paper.pdf")

    # only the chosen template (and what it reads) is an input of the LaTeX rules
    plan = [*cmd, "-n", "paper.pdf", "supplement.pdf"]
    other = workflow / "paper" / "templates" / ("acm.tex" if template == "ieee" else "ieee.tex")
    other.write_text(other.read_text() + "\n% an edit of another template\n")
    unchanged = subprocess.run(plan, capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    chosen = workflow / "paper" / "templates" / f"{template}.tex"
    chosen.write_text(chosen.read_text() + "\n% a template-only edit\n")
    edited = subprocess.run(plan, capture_output=True, text=True, timeout=120).stdout
    assert job_stats(edited) == {"paper": "1", "supplement": "1", "total": "2"}


def jobs_run(log: str, *rules: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job of ``rules`` that a Snakemake log shows started."""
    blocks = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", log, re.M)
    return sorted((rule, re.search(r"wildcards: (.*)", body)[1]) for rule, body in blocks if rule in rules)


@pytest.mark.e2e
def test_a_run_whose_outputs_are_gone_is_rebuilt_before_the_analysis_reads_it(tiny_study, tmp_path):
    """One run's outputs are lost (as after a forced rerun that failed), a best run's export too, and
    another run changes: the next build retrains and exports what is missing, then builds the paper
    and the submission from every run's current numbers."""
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study, symlinks=True)
    runs = study / "results" / "runs" / "digits"
    shutil.rmtree(runs / "lora_r8" / "deit_tiny" / "seed0")
    shutil.rmtree(runs / "full" / "deit_tiny" / "seed0" / "export")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["methods"]["linear"]["lr"] = 2.0e-2
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_command(study, tmp_path / "changed.yaml", "--cores", "2")

    built = subprocess.run(
        [*cmd, "paper.pdf", "results/submission.tar.gz"], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-5000:]
    run = "dataset=digits, method={}, model=deit_tiny"  # a job trains (exports) every seed
    assert jobs_run(built.stdout + built.stderr, "train", "export") == [
        ("export", run.format("full")),
        ("export", run.format("linear")),
        ("export", run.format("lora_r8")),
        ("train", run.format("linear")),
        ("train", run.format("lora_r8")),
    ]
    table = pd.read_csv(study / "results" / "analysis" / "runs.csv").set_index("method")
    for method in ("lora_r8", "linear"):
        metrics = json.loads((runs / method / "deit_tiny" / "seed0" / "metrics.json").read_text())
        assert table.loc[method, "test_top1"] == pytest.approx(metrics["test_top1"]), method
    assert (
        json.loads((runs / "linear" / "deit_tiny" / "seed0" / "config.json").read_text())["method"]["lr"]
        == 2.0e-2
    )
    with tarfile.open(study / "results" / "submission.tar.gz") as archive:
        assert "submission/best_runs/digits/full/deit_tiny/seed0/export/report.json" in archive.getnames()
    again = subprocess.run([*cmd, "-n", "paper.pdf"], capture_output=True, text=True, timeout=120)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.e2e
def test_real_download_rule_runs_against_a_fixture_server_through_training(tmp_path):
    from fixtures import serve, write_cifar_archive

    from vitpeft.data.download import file_digests

    www = tmp_path / "www"
    www.mkdir()
    write_cifar_archive(www / "cifar-10-python.tar.gz", "cifar10", per_class=6)
    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    work = tmp_path / "work"
    with serve(www) as url:
        config["datasets"]["cifar10"] = {
            "kind": "cifar10",
            "split_seed": 0,
            "val_fraction": 0.2,
            "base_url": url,
            "md5": file_digests(www / "cifar-10-python.tar.gz")["md5"],
        }
        config["studies"]["tiny"].update(datasets=["cifar10"], methods=["lora_r8"], transfer_check=False)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = snakemake_command(work, tmp_path / "config.yaml", "--cores", "2", "results/lora_r8_cifar10")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    manifest = json.loads((work / "resources" / "data" / "cifar10" / "manifest.json").read_text())
    assert manifest["source"]["url"] == f"{url}/cifar-10-python.tar.gz"
    assert manifest["source"]["archive_sha256"] == file_digests(www / "cifar-10-python.tar.gz")["sha256"]
    assert manifest["counts_per_class"]["test"] == [6] * 10
    summary = pd.read_csv(work / "results" / "lora_r8_cifar10" / "summary.csv")
    assert summary[["dataset", "method", "seed"]].values.tolist() == [["cifar10", "lora_r8", 0]]


@pytest.mark.e2e
def test_a_study_that_fails_its_checklist_builds_a_draft_and_no_submission(tmp_path):
    """Runs judged by windows of 2 epochs after 2 epochs of training cannot have converged: the
    paper and supplement are still built, marked DRAFT with the runs named on page 1; the checklist
    report (make paper's last step) exits 1 listing them; the submission archive refuses, naming
    the check. The window comes from the command line, as Snakemake's --config reads it."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["studies"]["tiny"].update(methods=["linear", "lora_r8"], transfer_check=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    cmd = snakemake_command(
        work, tmp_path / "config.yaml", "--cores", "2", "--config", "convergence={window: 2}"
    )
    built = subprocess.run(
        [*cmd, "--", "paper.pdf", "supplement.pdf"], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-5000:]
    checklist = json.loads((work / "results" / "analysis" / "checklist.json").read_text())
    assert not checklist["passed"] and checklist["failures"] == [
        f"run {method} on digits with deit_tiny, seed 0, not converged: 2 epoch(s): too few for two windows"
        for method in ("linear", "lora_r8")
    ]
    for name in ("paper.pdf", "supplement.pdf"):
        first_page = subprocess.run(
            ["pdftotext", "-l", "1", str(work / name), "-"], capture_output=True, text=True, check=True
        ).stdout
        first_page = " ".join(first_page.replace("-\n", "").split())
        assert "DRAFT, not for submission: 2 check(s) of the submission checklist failed." in first_page, name
        assert "run lora_r8 on digits with deit_tiny, seed 0, not converged" in first_page, name

    report = subprocess.run(  # make paper's last step
        [
            sys.executable,
            "-m",
            "vitpeft.analysis.checklist",
            str(work / "results" / "analysis" / "checklist.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 1 and "paper.pdf and supplement.pdf are DRAFTS" in report.stdout
    assert "  - run linear on digits with deit_tiny, seed 0, not converged" in report.stdout

    archive = subprocess.run(
        [*cmd, "--", "results/submission.tar.gz"], capture_output=True, text=True, timeout=600
    )
    assert archive.returncode != 0 and not (work / "results" / "submission.tar.gz").exists()
    log = (work / "results" / "logs" / "submission.log").read_text()
    assert "FailedChecklistError" in log and "2 check(s) failed, so paper.pdf is a draft" in log
