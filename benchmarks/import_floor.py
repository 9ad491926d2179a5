"""What importing the ML stack costs a finished study, and the work fraction it leaves at most.

Every Snakemake job is a fresh Python process. A job that trains, tunes, pretrains or exports
imports torch, timm and torchvision first (``vitpeft.runs`` or ``vitpeft.export``), and a job of
a method built on peft (LoRA, QLoRA, AdaLoRA) also peft, which imports transformers and
bitsandbytes. This script times each of those import sets in fresh interpreters on this machine
(the median CPU seconds of ``--repeats`` runs), counts the jobs of the study's Snakemake log that
pay each one, and prints

- the core-seconds the study spent importing, and their share of what Snakemake's wall time
  offered (as ``work_fraction.py`` counts it);
- the work fraction the study would reach if nothing but those imports came beside its training:
  the upper bound that its process layout (one process per job) sets at this training time.

    python benchmarks/import_floor.py [STUDY_DIR] [--log .snakemake/log/<file>.snakemake.log]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from work_fraction import Job, newest_log, parse_log, summarize

# What a job's script imports before it can work, by rule (workflow_scripts/*.py).
RULE_IMPORTS = {
    "train": "vitpeft.runs",
    "tune": "vitpeft.runs",
    "pretrain": "vitpeft.runs",
    "export": "vitpeft.export",
    "export_int": "vitpeft.export",
    "onnx_graph": "vitpeft.export",
}
# Method families whose modules import peft when they build or rebuild a model (vitpeft.methods).
PEFT_FAMILIES = {"lora", "qlora", "adalora"}


def job_family(job: Job) -> str | None:
    """The method family of a per-run job, from its first output: a run folder
    (results/runs/<dataset>/<method>/<model>/...) or a tuning folder
    (results/tuning/<dataset>/<family>/<model>/choice.json)."""
    from vitpeft.methods import parse_method_name

    parts = Path(job.outputs[0]).parts if job.outputs else ()
    if len(parts) > 3 and parts[:2] == ("results", "runs"):
        return parse_method_name(parts[3])[0]
    if len(parts) > 3 and parts[:2] == ("results", "tuning"):
        return parts[3]
    return None


def job_imports(job: Job) -> tuple[str, ...] | None:
    """The modules ``job`` imports at its start, or None for a job that does not import torch."""
    if job.rule not in RULE_IMPORTS:
        return None
    modules = (RULE_IMPORTS[job.rule],)
    return modules + ("peft",) if job_family(job) in PEFT_FAMILIES else modules


def import_cpu_s(modules: tuple[str, ...], repeats: int) -> tuple[float, float]:
    """Median CPU seconds (user + sys) and wall seconds of importing ``modules`` in a fresh
    interpreter (this one's executable and environment)."""
    cpu, wall = [], []
    for _ in range(repeats):
        before = os.times()
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", f"import {', '.join(modules)}"], check=True, capture_output=True
        )
        wall.append(time.perf_counter() - started)
        after = os.times()
        cpu.append(
            after.children_user - before.children_user + after.children_system - before.children_system
        )
    return statistics.median(cpu), statistics.median(wall)


def import_floor(root: Path, log: Path, repeats: int) -> dict:
    _, _, _, jobs = parse_log(log)
    summary = summarize(root, log)
    rules: dict[tuple[str, ...], Counter] = {}  # import set -> the jobs that pay it, by rule
    for job in jobs:
        modules = job_imports(job)
        if modules is not None:
            rules.setdefault(modules, Counter())[job.rule] += 1
    sets = []
    for modules, by_rule in sorted(rules.items()):
        cpu, wall = import_cpu_s(modules, repeats)
        sets.append(
            {
                "modules": modules,
                "jobs": by_rule.total(),
                "rules": dict(by_rule),
                "cpu_s": cpu,
                "wall_s": wall,
            }
        )
    imports = sum(s["jobs"] * s["cpu_s"] for s in sets)
    training = summary["runs_train_time_s"]
    return {
        "sets": sets,
        "jobs": sum(s["jobs"] for s in sets),
        "import_core_s": imports,
        "offered_core_s": summary["offered_core_s"],
        "runs_train_time_s": training,
        "work_fraction": summary["work_fraction"],
        "bound": training / (training + imports) if training + imports else 0.0,
    }


def report(floor: dict, repeats: int) -> str:
    lines = [f"import cost per process (median of {repeats} fresh interpreters on this machine)"]
    for s in floor["sets"]:
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(s["rules"].items()))
        lines.append(
            f"  {' + '.join(s['modules']):<24}{s['cpu_s']:6.2f} CPU-s {s['wall_s']:6.2f} s wall   x {s['jobs']:2d} jobs ({rules})"
        )
    offered, imports, training = floor["offered_core_s"], floor["import_core_s"], floor["runs_train_time_s"]
    lines += [
        f"{floor['jobs']} jobs import torch: {imports:.0f} core-s, {imports / offered:.0%} of the {offered:.0f} "
        "core-s that Snakemake's wall time offered",
        f"runs' training {training:.0f} s: work fraction {floor['work_fraction']:.2f}; with nothing but these "
        f"imports beside the training it would be {training:.0f} / ({training:.0f} + {imports:.0f}) = {floor['bound']:.2f}",
        f"a work fraction of 0.6 at this training time needs every overhead together below {training / 1.5:.0f} core-s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", nargs="?", default=".", type=Path, help="the workflow's folder")
    parser.add_argument("--log", type=Path, help="a Snakemake log (default: the newest in .snakemake/log)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per import set")
    args = parser.parse_args(argv)
    log = args.log or newest_log(args.study_dir)
    print(report(import_floor(args.study_dir, log, args.repeats), args.repeats))


if __name__ == "__main__":
    sys.exit(main())
