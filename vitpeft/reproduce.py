"""Rerun a finished run from its saved config and provenance, and say whether its metrics return.

    python -m vitpeft.reproduce results/runs/digits/lora_r8/deit_tiny/seed0

Float kernels differ between CPU models and between the instruction sets torch dispatches to
(AVX2, AVX512, ...), so the same commit trains to other numbers on another CPU. A rerun must match
exactly only on the same CPU model, with the same instruction set and the recorded thread count.
Elsewhere (another CPU; a GPU, where some kernels are also nondeterministic) every number must
agree within ``KERNEL_RTOL`` relative. :func:`tolerance` picks one of the two from the provenance
records. Wall-clock time and peak memory describe the machine, not the run, and are not compared.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitpeft.io import read_json, sha256_file

MACHINE_FIELDS = frozenset(
    {"train_time_s", "train_images_per_s", "peak_mem_mb", "train_peak_mem_mb", "eval_peak_mem_mb"}
)
# Where float kernels differ. Measured on the demo (deit_tiny on digits, its pretrained backbone,
# one thread), with torch forced to AVX2 or to its portable kernels instead of AVX512: LoRA r=8
# moved no number by more than 0.02%; full fine-tuning moved its test top-1 from 56.67 to 56.94
# and 55.83 (1.5%), its val top-1 by up to 1.9%, and its test loss by 2.4% (AVX2): beyond this.
KERNEL_RTOL = 0.02


@dataclass(frozen=True)
class Tolerance:
    """How closely a number computed here must match one computed where the run was trained.

    Attributes:
        rtol: 0 for exactly; otherwise the largest relative difference allowed.
        reason: why, in words: the devices, CPU models and instruction sets compared.
    """

    rtol: float
    reason: str

    def __str__(self) -> str:
        return f"{'exactly' if self.rtol == 0 else f'within {self.rtol:g} relative'}: {self.reason}"


def _cpu(record: dict[str, Any]) -> tuple[str | None, str | None]:
    hardware = record.get("hardware", {})
    return hardware.get("cpu"), hardware.get("cpu_capability")


def _describe(cpu: tuple[str | None, str | None]) -> str:
    return f"{cpu[0] or 'an unrecorded CPU'} with {cpu[1] or 'an unrecorded instruction set'}"


def tolerance(original: dict[str, Any], here: dict[str, Any]) -> Tolerance:
    """Exact when both provenance records are CPU runs on the same CPU model with the same
    instruction set; ``KERNEL_RTOL`` otherwise.

    Args:
        original: the trained run's ``provenance.json``.
        here: the provenance of the rerun or export, with the ``device`` it computes on. A record
            without the CPU model or instruction set (older runs) cannot show the same CPU.
    """
    devices = [str(record.get("device")).split(":")[0] for record in (original, here)]
    if devices != ["cpu", "cpu"]:
        return Tolerance(
            KERNEL_RTOL,
            f"on {devices[0]}, then {devices[1]}; GPU kernels differ from CPU ones and may be nondeterministic",
        )
    trained_cpu, this_cpu = _cpu(original), _cpu(here)
    if trained_cpu == this_cpu and None not in trained_cpu:
        return Tolerance(0.0, f"same CPU model and instruction set, {_describe(trained_cpu)}")
    return Tolerance(KERNEL_RTOL, f"another CPU, {_describe(trained_cpu)}, then {_describe(this_cpu)}")


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
    with tempfile.TemporaryDirectory() as scratch:
        rerun_dir = Path(out_dir or scratch)
        rerun = train_run(config, data_dir, backbone, rerun_dir, threads=provenance.get("threads"))
        here = read_json(rerun_dir / "provenance.json")
    allowed = tolerance(provenance, here)
    found = differences(original, rerun, allowed.rtol)
    return {
        "run_dir": str(run_dir),
        "device": here["device"],
        "rtol": allowed.rtol,
        "tolerance": str(allowed),
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
    print(
        f"{report['run_dir']}: {verdict} on {report['device']} ({report['tolerance']}); "
        f"test top-1 {top1['original']:.2f}% -> {top1['rerun']:.2f}%"
    )
    for line in report["differences"]:
        print(f"  {line}")
    return 0 if report["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
