"""Does the demo hold on another machine? Rebuild its runs under other CPU kernels, thread counts
and seeds, and print, per variant: every run's convergence gain against half the tolerance, the
tuned rates, the transfer check's interval, and whether every comparison the findings state keeps
the verdict it has under the first variant.

Each variant is a fresh working directory built by the repository's Snakefile and config.yaml up
to the findings (data, pretraining, tuning, every run, its export and the statistics; no LaTeX):

    default, avx2, avx512   ATEN_CPU_CAPABILITY forced (avx512 only where this CPU has it), 1 thread
    threads2                torch's own kernel choice, 2 threads per job
    seeds10to14             torch's own kernel choice, 1 thread, every seed moved past the config's
                            (study seeds 0-4 become 10-14; the transfer check's 0-9, 10-19)

The transfer check is printed on test (what the paper reports) and on validation (what a design
decision may look at).

    python benchmarks/robustness.py                          # every variant, in /tmp/robustness
    python benchmarks/robustness.py --variants default,seeds10to14 --root DIR --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from vitpeft.analysis.stats import paired_difference
from vitpeft.config import TRANSFER_BASELINE, TRANSFER_REFERENCE

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TARGETS = ["results/paper/findings.tex", "results/analysis/transfer.csv"]
ALPHA = 0.05


def cpu_has_avx512() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512f " in flags.replace("\n", " ")


def variants() -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment, ``--config`` arguments)."""
    kernels = ["default", "avx2"] + (["avx512"] if cpu_has_avx512() else [])
    chosen = {kernel: ({"ATEN_CPU_CAPABILITY": kernel}, ["threads=1"]) for kernel in kernels}
    chosen["threads2"] = ({}, ["threads=2"])
    demo = yaml.safe_load((REPO / "config.yaml").read_text())["studies"]["demo"]
    seeds, transfer_seeds = demo["seeds"], demo.get("transfer_seeds", demo["seeds"])
    shift = max(transfer_seeds) + 1  # no seed of the variant is one of the config's
    moved = f"studies={{demo: {{seeds: {[s + shift for s in seeds]}, transfer_seeds: {[s + shift for s in transfer_seeds]}}}}}"
    chosen[f"seeds{min(seeds) + shift}to{max(seeds) + shift}"] = ({}, ["threads=1", moved])
    return chosen


def build(workdir: Path, environment: dict[str, str], overrides: list[str], cores: int) -> float:
    """Build the targets in ``workdir``; returns the wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"} | environment
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores)]
    command += ["--configfile", str(REPO / "config.yaml"), "--config", *overrides, "--", *TARGETS]
    started = time.perf_counter()
    with open(workdir.with_suffix(".log"), "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"robustness: the build in {workdir} failed; see {workdir.with_suffix('.log')}")
    return time.perf_counter() - started


def verdict(row: pd.Series, p_column: str) -> str:
    if row[p_column] >= ALPHA:
        return "unclear"
    return "higher" if row["diff_mean"] > 0 else "lower"


def summarize(name: str, workdir: Path, wall_s: float) -> dict[str, str]:
    """Print one variant's numbers; return each comparison's verdict (and the transfer's)."""
    transfer_runs = pd.read_csv(workdir / "results/analysis/transfer_runs.csv")
    runs = pd.concat([pd.read_csv(workdir / "results/analysis/runs.csv"), transfer_runs])
    runs = runs.drop_duplicates("run_dir")  # the transfer check's extra seeds join the study's runs
    tolerance = float(runs.convergence_tolerance.iloc[0])
    gains = runs.set_index(["method", "seed"]).val_top1_gain_last_window.sort_index()
    within = int((gains <= tolerance / 2).sum())
    cpu_s = sum(
        pd.read_csv(path, sep="\t")["cpu_time"].sum() for path in workdir.glob("results/**/benchmark.tsv")
    )
    print(f"== {name}: {wall_s / 60:.1f} min wall, {cpu_s:.0f} CPU-s in the jobs' benchmark.tsv")
    print(
        f"runs: {int(runs.converged.sum())} of {len(runs)} converged; {within} of {len(runs)} gained at most "
        f"half the tolerance ({tolerance / 2:g} points); largest gains: "
        + ", ".join(
            f"{m} seed {s} {g:+.2f}" for (m, s), g in gains.sort_values(ascending=False).head(3).items()
        )
    )
    for method, by_seed in gains.groupby(level="method"):
        print(f"  {method:11s} " + "  ".join(f"seed {s} {g:+.2f}" for (_, s), g in by_seed.items()))
    choices = [json.loads(p.read_text()) for p in sorted(workdir.glob("results/tuning/*/*/*/choice.json"))]
    print(
        "tuned rates: "
        + ", ".join(
            f"{c['family']} {c['lr']:g}"
            + (f" (+{len(c['extensions'])} extension(s))" if c["extensions"] else "")
            + (f" AT THE {c['at_edge'].upper()} EDGE" if c["at_edge"] else "")
            for c in choices
        )
    )
    verdicts = {}
    transfer = pd.read_csv(workdir / "results/analysis/transfer.csv")
    for _, t in transfer.iterrows():
        key = f"transfer {t.method} - {t.baseline}"
        verdicts[key] = verdict(t, "p_value")
        print(
            f"{key}: {t.diff_mean:+.2f} points, 95% CI [{t.diff_ci_low:.2f}, {t.diff_ci_high:.2f}], "
            f"p = {t.p_value:.3g} ({verdicts[key]})"
        )
    for _, t in paired_difference(
        transfer_runs, TRANSFER_REFERENCE, TRANSFER_BASELINE, "val_top1"
    ).iterrows():
        print(
            f"  on validation: {t.diff_mean:+.2f} points, 95% CI [{t.diff_ci_low:.2f}, {t.diff_ci_high:.2f}], "
            f"seed s.d. {t.diff_std:.2f} ({int(t.diff_n)} seeds)"
        )
    comparisons = pd.read_csv(workdir / "results/analysis/comparisons.csv")
    for _, c in comparisons.iterrows():
        verdicts[f"{c.method} vs {c.baseline}"] = verdict(c, "p_holm")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = variants()
    parser.add_argument("--variants", default=",".join(known), help=f"of {', '.join(known)}")
    parser.add_argument("--root", type=Path, default=Path("/tmp/robustness"))
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--keep", action="store_true", help="keep each variant's working directory")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"robustness: unknown variant(s) {unknown}; known: {list(known)}")
    args.root.mkdir(parents=True, exist_ok=True)
    reference, changed = None, {}
    for name in names:
        workdir = args.root / name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        environment, overrides = known[name]
        verdicts = summarize(name, workdir, build(workdir, environment, overrides, args.cores))
        if reference is None:
            reference = (name, verdicts)
        else:
            changed[name] = {k: (reference[1][k], v) for k, v in verdicts.items() if reference[1].get(k) != v}
            kept = len(verdicts) - len(changed[name])
            print(
                f"findings: {kept} of {len(verdicts)} verdicts as under {reference[0]}"
                + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in changed[name].items())
            )
        if not args.keep:
            shutil.rmtree(workdir)
        print(flush=True)
    stable = all(not c for c in changed.values())
    print(f"verdicts {'identical' if stable else 'NOT identical'} across {', '.join(names)}")


if __name__ == "__main__":
    main()
