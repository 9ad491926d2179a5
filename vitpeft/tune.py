"""Learning rates chosen on validation: the ``tune`` stage.

For each method family x model x dataset of the study, one job trains short runs (seed
``tune.seed``, ``tune.epochs`` epochs, otherwise the study's own budget) over the family's grid of
peak learning rates, ``tune.grids.<family>``, and keeps the rate whose final validation top-1 is
highest. Ties go to the smaller rate: with a few hundred validation images a tie is common, and
the smaller rate is the safer one over the full budget. The choice and the whole grid go into
``choice.json``, from which the study's runs of that family read their rate.

Families (:func:`tuning_family`): every method family of the registry tunes its own rate (so
``lora_r4/8/16`` share ``lora``'s, ``qlora8`` and ``qlora4`` share ``qlora``'s, and QA-LoRA has
its own), except ``scratch``, which takes full fine-tuning's, so that the transfer check compares
training from random initialization with fine-tuning at the same rate. A family is tuned with one
representative method of the study (:func:`representative_method`). A family without a grid keeps
the rate of its ``methods`` entry.

This module imports neither torch nor timm (the Snakefile uses it); :func:`tune_family` imports
the trainer when it runs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from vitpeft.config import TRANSFER_BASELINE, ConfigError, RunConfig, resolve_run, study_methods
from vitpeft.io import config_hash, provenance, read_json, write_json
from vitpeft.methods import METHODS, parse_method_name

CRITERION = "val_top1"  # the final weights' validation top-1, in percent
TIE_RULE = "the smaller learning rate"
# scratch trains at full fine-tuning's rate (see the module docstring)
SHARED_RATES = {TRANSFER_BASELINE: "full"}
TUNABLE_FAMILIES = tuple(family for family in METHODS if family not in SHARED_RATES)


def rate_family(family: str) -> str:
    """The family whose rate a method family trains at: its own, or full's for ``scratch``."""
    return SHARED_RATES.get(family, family)


def tuning_family(method: str) -> str:
    """The family whose tuned rate ``method`` trains at (``lora_r16`` -> ``lora``, ``scratch`` -> ``full``)."""
    return rate_family(parse_method_name(method)[0])


def grids(config: dict[str, Any]) -> dict[str, list[float]]:
    """``tune.grids``: the learning rates tried per family (no entry: the family is not tuned)."""
    return config.get("tune", {}).get("grids", {})


def is_tuned(config: dict[str, Any], method: str) -> bool:
    return tuning_family(method) in grids(config)


def representative_method(config: dict[str, Any], family: str) -> str:
    """The study method that a family's rate is tuned with: the middle one of the family's methods
    in the study, ordered by their name's numbers (``lora_r4, lora_r8, lora_r16`` -> ``lora_r8``;
    ``qlora4_r8, qlora8_r8`` -> ``qlora4_r8``, the lower middle)."""
    methods = [m for m in study_methods(config) if parse_method_name(m)[0] == family]
    if not methods:
        raise ValueError(f"the study has no method of family {family!r}")
    methods.sort(key=lambda m: tuple(parse_method_name(m)[1].values()))
    return methods[(len(methods) - 1) // 2]


def study_families(config: dict[str, Any]) -> list[str]:
    """The tuned families of the study's methods, in registry order."""
    families = {parse_method_name(m)[0] for m in study_methods(config)}
    return [family for family in TUNABLE_FAMILIES if family in families and family in grids(config)]


def with_lr(run: RunConfig, lr: float) -> RunConfig:
    return dataclasses.replace(run, method=dataclasses.replace(run.method, lr=float(lr)))


def tuning_runs(config: dict[str, Any], model: str, dataset: str, family: str) -> list[RunConfig]:
    """The short runs of one tuning job: one per grid value, in grid order."""
    section = config["tune"]
    run = resolve_run(config, model, dataset, representative_method(config, family), section["seed"])
    # The schedule compressed into the short budget: warmup keeps its share of the epochs (a full
    # study's 10 warmup epochs would otherwise fill a 10-epoch tuning run). No weight EMA: an
    # average over ~1/(1 - decay) steps would still be mostly the initial weights after a short
    # run, and the choice would rank the initialization, not the rate.
    share = section["epochs"] / run.train.epochs
    train = dataclasses.replace(
        run.train, epochs=section["epochs"], warmup_epochs=run.train.warmup_epochs * share
    )
    run = dataclasses.replace(run, train=train, method=dataclasses.replace(run.method, ema_decay=0.0))
    return [with_lr(run, lr) for lr in section["grids"][family]]


def run_folder(lr: float) -> str:
    """The folder of a grid value's short run, inside the tuning job's folder: ``lr0.005``."""
    return f"lr{lr:g}"


def choose(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid entry with the highest :data:`CRITERION`; on a tie, the smaller ``lr``."""
    return max(results, key=lambda entry: (entry[CRITERION], -entry["lr"]))


def check_grids(config: dict[str, Any]) -> None:
    """Each ``tune.grids`` entry is a known family's non-empty list of positive numbers.

    Raises:
        ConfigError: naming the key and the value.
    """
    for family, grid in grids(config).items():
        key = f"tune.grids.{family}"
        if family not in TUNABLE_FAMILIES:
            shared = f" ({family} trains at {SHARED_RATES[family]}'s rate)" if family in SHARED_RATES else ""
            raise ConfigError(
                f"{key}: not a tunable method family{shared}; tunable: {list(TUNABLE_FAMILIES)}"
            )
        if not isinstance(grid, list) or not grid:
            raise ConfigError(f"{key}: must be a non-empty list of learning rates, got {grid!r}")
        for lr in grid:
            if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
                raise ConfigError(f"{key}: every learning rate must be a number > 0, got {lr!r} in {grid!r}")
        if len(set(grid)) != len(grid):
            raise ConfigError(f"{key}: a learning rate is listed twice in {grid!r}")


def chosen_lr(choice_path: str | Path) -> float:
    """The learning rate a tuning job chose (its ``choice.json``)."""
    return float(read_json(choice_path)["lr"])


def tune_family(
    run_dicts: list[dict[str, Any]],
    data_dir: str | Path,
    backbone: str | Path | None,
    choice_path: str | Path,
    threads: int | None = None,
    convergence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the short runs of one tuning job in this process and write its ``choice.json``.

    Each run keeps its files (metrics, config, provenance, log) in a folder named by its rate
    (:func:`run_folder`) beside ``choice_path``.

    Returns:
        The choice: ``lr`` (chosen), ``family``, ``criterion``, ``tie_rule``, the runs' ``method``, ``model``,
        ``dataset``, ``seed`` and ``epochs``, and ``grid``: per rate its ``val_top1``,
        ``val_top5``, ``epochs``, ``train_time_s``, convergence verdict, folder and ``config_hash`` (the test split
        is not copied here: nothing is chosen by it).
    """
    from vitpeft.runs import train_runs  # torch: only when the job runs

    job_dir = Path(choice_path).parent
    out_dirs = [job_dir / run_folder(run["method"]["lr"]) for run in run_dicts]
    first = run_dicts[0]
    results = train_runs(
        run_dicts,
        data_dir,
        backbone,
        out_dirs,
        logs=[out_dir / "train.log" for out_dir in out_dirs],
        threads=threads,
        convergence=convergence,
    )
    grid = [
        {
            "lr": run["method"]["lr"],
            CRITERION: metrics[CRITERION],
            "val_top5": metrics["val_top5"],
            "epochs": metrics["epochs"],
            "train_time_s": metrics["train_time_s"],
            "converged": metrics.get("converged"),
            "run_dir": str(out_dir),
            "config_hash": config_hash(run),
        }
        for run, metrics, out_dir in zip(run_dicts, results, out_dirs, strict=True)
    ]
    best = choose(grid)
    choice = {
        "lr": best["lr"],
        "family": tuning_family(first["method"]["name"]),
        "criterion": CRITERION,
        "tie_rule": TIE_RULE,
        "method": first["method"]["name"],
        "model": first["model"]["name"],
        "dataset": first["dataset"],
        "seed": first["seed"],
        "epochs": first["train"]["epochs"],
        "grid": grid,
        "provenance": provenance(backbone_weights=str(backbone) if backbone else None),
    }
    write_json(choice_path, choice)
    table = ", ".join(f"{entry['lr']:g}: {entry[CRITERION]:.2f}%" for entry in grid)
    print(f"{job_dir}: val top-1 {table}; chose lr {best['lr']:g}", file=sys.stderr)
    return choice
