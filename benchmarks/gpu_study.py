"""One short real training job per method through Snakemake, on fixture data, on this machine's device.

Writes a config (every method of the full study, one seed, two epochs, on synthetic shapes at the
model's input size, the backbone pretrained by the pipeline for one epoch; the full study's
training recipe: its augmentation, label smoothing, clipping and each family's hyperparameters and
weight average) and builds every cell (train and export) with the repository's Snakefile. On a GPU this is what the prepared check adds
to ``device_check.py``: bitsandbytes' layers, mixed precision and the exports, through the rules a
study runs. Printed per method: the device and precision each run trained with, its training
images/s, test top-1 and whether its exports passed their checks.

    python benchmarks/gpu_study.py                                   # deit_small at 224 px
    python benchmarks/gpu_study.py --model deit_tiny --img-size 16 --patch-size 4 --depth 2
                                                                     # a quick CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
METHODS = ["full", "linear", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]


SHORT_RUN_EMA_DECAY = 0.9  # the study's 0.99992 would keep a 40-step run's average at its start


def full_study_recipe() -> tuple[dict, dict, dict]:
    """The full study's augmentation (CIFAR-10's, as every dataset of it), its training's
    regularization and each family's hyperparameters but its rate, the weight average at a decay
    that a short run moves, from config.yaml: what its runs compute on a GPU besides the model."""
    full = yaml.safe_load((REPO / "config.yaml").read_text())["studies"]["full"]["overrides"]
    train = {key: full["train"][key] for key in ("grad_clip", "label_smoothing", "drop_path_rate")}
    methods = {
        family: {key: value for key, value in hp.items() if key != "lr"}
        | {"ema_decay": SHORT_RUN_EMA_DECAY if hp.get("ema_decay", 0.0) > 0 else 0.0}
        for family, hp in full["methods"].items()
    }
    return full["datasets"]["cifar10"]["augment"], train, methods


def study_config(args) -> dict:
    augment, regularization, families = full_study_recipe()
    model = {
        "img_size": args.img_size,
        "patch_size": args.patch_size,
        "backbone": {"source": "pretrain", "dataset": "source"},
    }
    if args.depth:
        model["kwargs"] = {"depth": args.depth}
    shapes = {"kind": "synthetic_shapes", "split_seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}
    return {
        "study": "check",
        "studies": {
            "check": {
                "title": "Device check",
                "description": "One short run per method on synthetic shapes.",
                "models": [args.model],
                "datasets": ["shapes"],
                "methods": METHODS,
                "seeds": [0],
                "transfer_check": False,
            }
        },
        "models": {args.model: model},
        "datasets": {
            "shapes": {
                **shapes,
                "options": {"num_images": args.images, "image_size": args.img_size, "seed": 0},
                "augment": augment,
            },
            "source": {
                **shapes,
                "options": {"num_images": args.images, "image_size": args.img_size, "seed": 1},
            },
        },
        "train": {"epochs": 2, "batch_size": args.batch_size, "eval_batch_size": 256, "warmup_epochs": 0.2}
        | regularization,
        "pretrain": {"epochs": 1, "batch_size": args.batch_size, "lr": 1.0e-3},
        "methods": {family: {"lr": 1.0e-3, **recipe} for family, recipe in families.items()},
        "tune": {"epochs": 1, "grids": {}},  # every family at its methods entry's rate
        "convergence": {"window": 1, "tolerance": 100.0},  # two epochs: this checks the path, not a result
        "device": args.device,
        "threads": args.threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--depth", type=int, help="fewer blocks than the model's (a quick run)")
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cores", default="1", help="snakemake --cores: jobs side by side times --threads")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per job (ONNX export and checks)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vitpeft_gpu_study"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    config = args.workdir / "check_config.yaml"
    config.write_text(yaml.safe_dump(study_config(args), sort_keys=False))
    targets = [f"results/{method}_shapes" for method in METHODS]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(args.workdir)]
    command += ["--configfile", str(config), "--cores", args.cores, "--scheduler", "greedy", "--keep-going"]
    started = time.perf_counter()
    result = subprocess.run(command + targets, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(f"{args.model} at {args.img_size} px, {len(METHODS)} methods through Snakemake in {wall:.0f} s")
    failed = []
    for method in METHODS:
        run = args.workdir / "results" / "runs" / "shapes" / method / args.model / "seed0"
        try:
            print(f"{method:>11}: {run_summary(run)}")
        except FileNotFoundError as missing:
            failed.append(method)
            print(f"{method:>11}: FAILED ({Path(missing.filename).name} missing)")
    if result.returncode != 0 or failed:
        for log in failure_logs(args.workdir / "results"):
            print(f"--- {log.relative_to(args.workdir)}:", *log.read_text().splitlines()[-20:], sep="\n")
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(
            f"snakemake failed (exit {result.returncode}) after {wall:.0f} s: {', '.join(failed)}"
        )


def run_summary(run: Path) -> str:
    """The device and precision a run trained with, its augmentation and weight average, its
    speed, test top-1 and exports."""
    metrics = json.loads((run / "metrics.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())
    export = json.loads((run / "export" / "report.json").read_text())
    config = json.loads((run / "config.json").read_text())
    augment = config["augment"]
    recipe = [
        name
        for name, used in (
            ("RandAugment", augment["randaugment"]),
            ("mixup", augment["mixup_alpha"] > 0),
            ("cutmix", augment["cutmix_alpha"] > 0),
            ("erasing", augment["erasing_prob"] > 0),
        )
        if used
    ] + [f"EMA {config['method']['ema_decay']:g}"]
    return (
        f"{provenance.get('device')} {provenance.get('precision')}, {' '.join(recipe)}, "
        f"{metrics.get('train_images_per_s', float('nan')):.0f} img/s, test top-1 "
        f"{metrics['test_top1']:.1f}%, exports {'passed' if export['passed'] else 'FAILED'} "
        f"({', '.join(sorted(export['bytes']))})"
    )


def failure_logs(results: Path) -> list[Path]:
    """The jobs' logs that hold a Python traceback: where a failed run says why."""
    return sorted(log for log in results.rglob("*.log") if "Traceback" in log.read_text(errors="replace"))


if __name__ == "__main__":
    main()
