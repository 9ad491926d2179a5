"""Rerun a finished run from its saved config and provenance, and say whether its metrics return.

    python -m vitpeft.reproduce results/runs/digits/lora_r8/deit_tiny/seed0

On CPU with the recorded thread count the rerun must match exactly; on a GPU, where some kernels
are nondeterministic, every number must agree within ``GPU_RTOL`` relative. Wall-clock time and
peak memory describe the machine, not the run, and are not compared.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from vitpeft.io import read_json, sha256_file

MACHINE_FIELDS = frozenset(
    {"train_time_s", "train_images_per_s", "peak_mem_mb", "train_peak_mem_mb", "eval_peak_mem_mb"}
)
GPU_RTOL = 0.02


def differences(original: Any, rerun: Any, rtol: float = 0.0, path: str = "") -> list[str]:
    """Every place where two metrics records disagree, as ``field: original != rerun``."""
    if isinstance(original, dict) and isinstance(rerun, dict):
        found = []
        for key in sorted(set(original) | set(rerun)):
            if key in MACHINE_FIELDS:
                continue
            where = f"{path}.{key}" if path else key
            if key not in original or key not in rerun:
                found.append(f"{where}: only in the {'rerun' if key in rerun else 'original'}")
            else:
                found += differences(original[key], rerun[key], rtol, where)
        return found
    if isinstance(original, list) and isinstance(rerun, list) and len(original) == len(rerun):
        return [
            d
            for i, (a, b) in enumerate(zip(original, rerun, strict=True))
            for d in differences(a, b, rtol, f"{path}[{i}]")
        ]
    both_numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (original, rerun))
    if both_numbers and rtol > 0 and math.isclose(original, rerun, rel_tol=rtol, abs_tol=1e-12):
        return []
    return [] if original == rerun else [f"{path}: {original!r} != {rerun!r}"]


def reproduce(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``run_dir``'s run again from its ``config.json`` and compare the metrics.

    Args:
        data_dir: the prepared dataset; by default ``resources/data/<dataset>`` of the working
            directory, as the workflow lays it out. Its manifest must be the one the run used.
        out_dir: where the rerun writes; a temporary folder by default.
    """
    import torch

    from vitpeft.runs import train_run

    run_dir = Path(run_dir)
    config, provenance = read_json(run_dir / "config.json"), read_json(run_dir / "provenance.json")
    original = read_json(run_dir / "metrics.json")
    data_dir = Path(data_dir or Path("resources/data") / config["dataset"])
    if sha256_file(data_dir / "manifest.json") != original["data_manifest_sha256"]:
        raise ValueError(
            f"{data_dir} is not the data that {run_dir} was trained on (manifest SHA-256 differs)"
        )
    backbone = provenance.get("backbone_weights")
    on_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as scratch:
        rerun = train_run(config, data_dir, backbone, out_dir or scratch, threads=provenance.get("threads"))
    rtol = GPU_RTOL if on_gpu else 0.0
    found = differences(original, rerun, rtol)
    return {
        "run_dir": str(run_dir),
        "device": "cuda" if on_gpu else "cpu",
        "rtol": rtol,
        "matches": not found,
        "differences": found,
        "test_top1": {"original": original["test_top1"], "rerun": rerun["test_top1"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dir", help="a finished run's folder, results/runs/<dataset>/<method>/<model>/seed<s>"
    )
    parser.add_argument("--data-dir", help="the prepared dataset (default: resources/data/<dataset>)")
    args = parser.parse_args(argv)
    report = reproduce(args.run_dir, args.data_dir)
    top1 = report["test_top1"]
    verdict = "reproduced" if report["matches"] else "NOT reproduced"
    tolerance = "exactly" if report["rtol"] == 0 else f"within {report['rtol']:g} relative"
    print(
        f"{report['run_dir']}: {verdict} on {report['device']} ({tolerance}); test top-1 {top1['original']:.2f}% -> {top1['rerun']:.2f}%"
    )
    for line in report["differences"]:
        print(f"  {line}")
    return 0 if report["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
