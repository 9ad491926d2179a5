"""The work fraction of a finished study, and where the rest of the machine's time went.

Work fraction = the runs' summed training time (``train_time_s`` of each ``metrics.json``) over
the core-seconds that Snakemake's wall time offers (wall time x ``--cores``). The wall time and
each job's start, end, threads and outputs are read from Snakemake's log of the invocation
(``.snakemake/log/``, the newest unless ``--log`` names one); CPU seconds from each job's
``benchmark.tsv`` where its rule has one.

Each job holds ``threads`` cores from its start to its end; the table splits the offered
core-seconds by rule (a train job into its training and the rest: start-up, imports, set-up, the
test pass, writing), and what no job held is ``idle``. Log times have one-second resolution, so
a job's share is exact to a second or so.

    python benchmarks/work_fraction.py [STUDY_DIR] [--log .snakemake/log/<file>.snakemake.log]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
JOB_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")  # tune is a checkpoint
FINISHED = re.compile(
    r"^Finished job(?:id:)? (\d+)"
)  # "Finished jobid: 5 (Rule: x)" (v9), "Finished job 5." (v8)
FIELD = re.compile(r"^\s+(\w+): (.*)$")
CORES = re.compile(r"^Provided cores: (\d+)")


@dataclass
class Job:
    """One job of the log: its rule, when it ran, the cores it held and its files."""

    rule: str
    start: datetime
    end: datetime | None = None
    threads: int = 1
    outputs: list[str] = field(default_factory=list)
    benchmark: str | None = None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def parse_log(path: Path) -> tuple[int, datetime, datetime, list[Job]]:
    """Cores, first and last timestamp, and the finished jobs of one Snakemake log."""
    cores, first, last, now = None, None, None, None
    jobs: dict[str, Job] = {}
    pending: Job | None = None  # the job whose header block is being read
    for line in path.read_text().splitlines():
        if match := CORES.match(line):
            cores = int(match[1])
        elif match := TIMESTAMP.match(line):
            now = datetime.strptime(match[1], "%a %b %d %H:%M:%S %Y")
            first, last, pending = first or now, now, None
        elif (match := JOB_START.match(line)) and now is not None:
            pending = Job(match[1], now)
        elif pending is not None and (match := FIELD.match(line)):
            key, value = match[1], match[2]
            if key == "jobid":
                jobs[value] = pending
            elif key == "output":
                pending.outputs = [p.strip() for p in value.split(",")]
            elif key == "threads":
                pending.threads = int(value)
            elif key == "benchmark":
                pending.benchmark = value.strip()
        elif (match := FINISHED.match(line)) and match[1] in jobs:
            jobs[match[1]].end = now
    if cores is None or first is None:
        raise ValueError(f"{path}: not a Snakemake log with 'Provided cores' and timestamps")
    return cores, first, last, [job for job in jobs.values() if job.end is not None]


def benchmark_cpu_s(path: Path) -> float:
    """The ``cpu_time`` column of a Snakemake benchmark file (summed over its repeats)."""
    with path.open() as f:
        return sum(float(row["cpu_time"]) for row in csv.DictReader(f, delimiter="\t"))


def train_time_s(job: Job, root: Path) -> float:
    """The training time a train, tune or pretrain job recorded in its JSON outputs, summed over its
    runs (a train job trains every seed of a model x dataset x method, a tune job one short run per
    rate of its grid, each in ``choice.json``'s ``grid``; 0 if none)."""
    total = 0.0
    for output in job.outputs:
        if output.endswith(".json") and (root / output).exists():
            record = json.loads((root / output).read_text())
            total += float(record.get("train_time_s", 0.0))
            total += sum(float(entry.get("train_time_s", 0.0)) for entry in record.get("grid", []))
    return total


def summarize(root: Path, log: Path) -> dict:
    cores, first, last, jobs = parse_log(log)
    wall = (last - first).total_seconds()
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in jobs:
        held = job.seconds * job.threads
        kind = kinds[job.rule]
        kind["jobs"] += 1
        if job.rule in ("train", "tune", "pretrain"):
            trained = min(train_time_s(job, root), held)
            kinds[f"{job.rule}: training"]["core_s"] += trained
            held -= trained
        kind["core_s"] += held
        if job.benchmark and (root / job.benchmark).exists():
            kind["cpu_s"] += benchmark_cpu_s(root / job.benchmark)
            kind["benchmarked"] += 1
    offered = wall * cores
    held_by_jobs = sum(k["core_s"] for k in kinds.values())
    kinds["idle"]["core_s"] = max(0.0, offered - held_by_jobs)
    training = kinds["train: training"]["core_s"] + kinds["tune: training"]["core_s"]
    return {
        "log": str(log),
        "cores": cores,
        "wall_s": wall,
        "offered_core_s": offered,
        "runs_train_time_s": training,
        "pretrain_train_time_s": kinds["pretrain: training"]["core_s"],
        "work_fraction": training / offered if offered else 0.0,
        "kinds": {
            name: dict(values) for name, values in kinds.items() if values.get("core_s") or values.get("jobs")
        },
    }


def report(summary: dict) -> str:
    lines = [
        f"log {summary['log']}",
        f"wall {summary['wall_s']:.0f} s x {summary['cores']} cores = {summary['offered_core_s']:.0f} core-s",
        f"runs' training (metrics.json train_time_s; the tuning runs' too): {summary['runs_train_time_s']:.0f} s",
        f"work fraction {summary['work_fraction']:.2f}"
        f" ({(summary['runs_train_time_s'] + summary['pretrain_train_time_s']) / summary['offered_core_s']:.2f}"
        " with the backbone pretraining)",
        "",
        f"{'where the core-seconds went':<28}{'jobs':>6}{'core-s':>9}{'share':>8}{'cpu-s':>9}",
    ]
    kinds = sorted(summary["kinds"].items(), key=lambda kv: -kv[1]["core_s"])
    for name, k in kinds:
        cpu = f"{k['cpu_s']:9.0f}" if k.get("benchmarked") else f"{'-':>9}"
        jobs = f"{k['jobs']:6.0f}" if k.get("jobs") else f"{'':>6}"
        lines.append(f"{name:<28}{jobs}{k['core_s']:9.0f}{k['core_s'] / summary['offered_core_s']:8.1%}{cpu}")
    cpu_total = sum(k.get("cpu_s", 0.0) for k in summary["kinds"].values())
    lines.append(f"cpu-s summed over the benchmark.tsv files: {cpu_total:.0f}")
    return "\n".join(lines)


def newest_log(root: Path) -> Path:
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise SystemExit(f"no Snakemake log under {root / '.snakemake' / 'log'}")
    return logs[-1]  # named by start time, so the last sorts newest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", nargs="?", default=".", type=Path, help="the workflow's folder")
    parser.add_argument("--log", type=Path, help="a Snakemake log (default: the newest in .snakemake/log)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    log = args.log or newest_log(args.study_dir)
    summary = summarize(args.study_dir, log)
    print(json.dumps(summary, indent=1) if args.json else report(summary))


if __name__ == "__main__":
    sys.exit(main())
