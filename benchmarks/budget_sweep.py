"""How flat is the end of each method's validation curve at a given budget? The demo's epochs were
chosen with this script, on validation only: the runs it trains never evaluate the test split.

In a demo working directory whose tuning has run (the data, the pretrained backbone and each
family's ``choice.json``), it trains each method at its tuned rate for every budget and seed
given, and prints the last-window gain of the convergence criterion (``vitpeft.convergence``):
its mean, standard deviation and maximum over the seeds, and the runs above half the tolerance.

    snakemake --cores 2 -d DIR --configfile config.yaml -- results/tuning/digits/scratch/vit_w64_d4/choice.json ...
    python benchmarks/budget_sweep.py DIR --methods linear,scratch --epochs 30,36 --seeds 0-9
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import yaml

from vitpeft.config import apply_study_overrides, resolve_run
from vitpeft.convergence import ConvergenceCriterion
from vitpeft.io import logging_to
from vitpeft.methods import parse_method_name
from vitpeft.tune import chosen_lr, with_lr

REPO = Path(__file__).resolve().parents[1]


def seeds_of(text: str) -> list[int]:
    """``0-9`` or ``0,3,5``."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(seed) for seed in text.split(",")]


def main() -> None:
    from vitpeft.runs import train_run  # torch: after the arguments parse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a demo working directory whose tuning has run")
    parser.add_argument("--methods", default="linear,scratch")
    parser.add_argument("--epochs", default="30,36", help="budgets to compare, comma-separated")
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="vit_w64_d4")
    args = parser.parse_args()
    config = apply_study_overrides(yaml.safe_load((REPO / "config.yaml").read_text()))
    criterion = ConvergenceCriterion(**config.get("convergence", {}))
    data_dir = args.workdir / "resources/data" / args.dataset
    for method in args.methods.split(","):
        family = parse_method_name(method)[0]
        lr = chosen_lr(args.workdir / f"results/tuning/{args.dataset}/{family}/{args.model}/choice.json")
        source = config["models"][args.model]["backbone"]["dataset"]
        pretrained = args.workdir / f"resources/backbones/{args.model}_{source}.safetensors"
        for epochs in [int(e) for e in args.epochs.split(",")]:
            gains = []
            for seed in seeds_of(args.seeds):
                run = with_lr(resolve_run(config, args.model, args.dataset, method, seed), lr)
                run = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=epochs))
                backbone = pretrained if run.method.uses_pretrained_backbone else None
                with tempfile.TemporaryDirectory() as out_dir, logging_to(Path(out_dir) / "train.log"):
                    metrics = train_run(
                        run.to_dict(), data_dir, backbone, out_dir, threads=1, evaluate_test=False
                    )
                gains.append(criterion.gain(metrics["curves"]["val_top1"]))
            above = sum(gain > criterion.tolerance / 2 for gain in gains)
            print(
                f"{method} lr {lr:g}, {epochs} epochs, {len(gains)} seeds: last-window gain mean "
                f"{statistics.mean(gains):+.2f}, s.d. {statistics.stdev(gains):.2f}, max {max(gains):+.2f} "
                f"points; {above} above half the tolerance ({criterion.tolerance / 2:g})",
                flush=True,
            )


if __name__ == "__main__":
    main()
