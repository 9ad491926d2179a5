"""Learning rates chosen on validation: the ``tune`` stage.

For each method family x model x dataset of the study, one job trains short runs (seed
``tune.seed``, ``tune.epochs`` epochs, otherwise the study's own budget) over the family's grid of
peak learning rates, ``tune.grids.<family>``. Rates whose final validation top-1 is within one
binomial standard error of the best are tied with it: a few validation images tell them apart,
which another CPU kernel or seed can flip. The choice is the middle of that plateau of tied rates
(the lower middle of an even count): further from the rates at which training breaks down than
the best alone, and further from those too slow for the budget than the smallest tied rate, it
barely moves when noise reorders the plateau. A rate whose loss turns NaN or infinite is
recorded as diverged and ranked below every finite one. A choice at an edge of the rates tried
says the optimum may lie beyond it, so the grid is extended one step that way (by the grid's own
ratio at that edge) and the new rate is tried, up to ``tune.max_extensions`` times; a choice still
at an edge is recorded as such and fails the checklist. The choice and every rate tried go into
``choice.json``, from which the study's runs of that family read their rate. The short runs never
evaluate the test split.

Families (:func:`tuning_family`): every method family of the registry tunes its own rate (so
``lora_r4/8/16`` share ``lora``'s, ``qlora8`` and ``qlora4`` share ``qlora``'s, and QA-LoRA has
its own). ``scratch`` is tuned on its own grid if it has one (the transfer check then compares each
initialization at its own best rate); without one it takes full fine-tuning's rate (the check then
differs in the initialization alone). A family is tuned with one representative method of the study
(:func:`representative_method`). A family without a grid keeps the rate of its ``methods`` entry.

This module imports neither torch nor timm (the Snakefile uses it); :func:`tune_family` imports
the trainer when it runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from vitpeft.config import (
    TRANSFER_BASELINE,
    TUNABLE_FAMILIES,
    RunConfig,
    grids,
    resolve_run,
    study_methods,
)
from vitpeft.io import config_hash, provenance, read_json, write_json
from vitpeft.methods import parse_method_name

CRITERION = "val_top1"  # the final weights' validation top-1, in percent
TIE_RULE = "the middle (lower middle) of the rates within one binomial standard error of the best"
DIVERGED_RULE = "ranked below every finite result"
MAX_EXTENSIONS = 2  # tune.max_extensions' default
# scratch trains at full fine-tuning's rate unless it has a grid of its own (the module docstring)
SHARED_RATES = {TRANSFER_BASELINE: "full"}


def rate_family(family: str, config: dict[str, Any]) -> str:
    """The family whose rate a method family trains at: its own, or, for ``scratch`` without a
    grid of its own, full's."""
    if family in SHARED_RATES and family not in grids(config):
        return SHARED_RATES[family]
    return family


def tuning_family(method: str, config: dict[str, Any]) -> str:
    """The family whose tuned rate ``method`` trains at (``lora_r16`` -> ``lora``; ``scratch`` ->
    ``full`` unless ``scratch`` has a grid)."""
    return rate_family(parse_method_name(method)[0], config)


def is_tuned(config: dict[str, Any], method: str) -> bool:
    return tuning_family(method, config) in grids(config)


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


def budgeted_runs(config: dict[str, Any], model: str, dataset: str, family: str) -> list[RunConfig]:
    """What one tuning job may train, for its resources: the grid's runs and, at the top rate (the
    costliest only in time), as many more as ``tune.max_extensions`` may add."""
    runs = tuning_runs(config, model, dataset, family)
    return runs + [runs[-1]] * config["tune"]["max_extensions"]


def run_folder(lr: float) -> str:
    """The folder of a grid value's short run, inside the tuning job's folder: ``lr0.005``."""
    return f"lr{lr:g}"


def standard_error(top1: float, images: int) -> float:
    """The binomial standard error, in points, of a top-1 of ``top1`` percent on ``images`` images."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / images)


def choose(results: list[dict[str, Any]], band: float = 0.0) -> dict[str, Any]:
    """The middle, by ``lr``, of the entries whose :data:`CRITERION` is within ``band`` points of
    the best (the lower middle of an even count; ``band`` 0: the best, the smaller ``lr`` on an
    exact tie). A diverged entry (its criterion None) is chosen only if every entry diverged: then
    the smallest ``lr``."""
    finite = [entry for entry in results if entry[CRITERION] is not None]
    if not finite:
        return min(results, key=lambda entry: entry["lr"])
    best = max(entry[CRITERION] for entry in finite)
    tied = sorted(
        (entry for entry in finite if entry[CRITERION] >= best - band), key=lambda entry: entry["lr"]
    )
    return tied[(len(tied) - 1) // 2]


def edge(results: list[dict[str, Any]], lr: float) -> str | None:
    """``"lowest"`` or ``"highest"`` if ``lr`` is that edge of the rates tried, else None."""
    rates = sorted(entry["lr"] for entry in results)
    if lr == rates[0]:
        return "lowest"
    if lr == rates[-1]:
        return "highest"
    return None


def next_rate(results: list[dict[str, Any]], side: str) -> float:
    """One step beyond the ``side`` edge of the rates tried, by the ratio of the two rates there."""
    rates = sorted(entry["lr"] for entry in results)
    rate = rates[-1] * rates[-1] / rates[-2] if side == "highest" else rates[0] * rates[0] / rates[1]
    return float(f"{rate:.12g}")  # 0.02, not 0.020000000000000004


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
    max_extensions: int = MAX_EXTENSIONS,
) -> dict[str, Any]:
    """Train the short runs of one tuning job in this process, extend the grid while the choice
    sits at an edge of it (at most ``max_extensions`` rates more), and write its ``choice.json``.

    Each run keeps its files (metrics, config, provenance, log) in a folder named by its rate
    (:func:`run_folder`) beside ``choice_path``. A run whose loss diverges leaves its log there.

    Returns:
        The choice: ``lr`` (chosen), ``family``, ``criterion``, ``tie_rule``, the runs' ``method``,
        ``model``, ``dataset``, ``seed`` and ``epochs``; ``val_images`` and ``tie_band`` (the
        standard error, in points, within which rates count as tied); ``grid``: per rate tried, in the order
        tried, its ``val_top1`` and ``val_top5`` (None if it diverged), ``diverged``, ``epochs``,
        ``train_time_s``, convergence verdict, folder and ``config_hash``; ``extensions``: each
        rate added beyond an edge and which edge; ``at_edge``: ``"lowest"`` or ``"highest"`` if the
        choice is still an edge of the rates tried, else None.
    """
    from vitpeft.io import logging_to
    from vitpeft.runs import train_run  # torch: only when the job runs

    job_dir = Path(choice_path).parent

    def short_run(run: dict[str, Any]) -> dict[str, Any]:
        out_dir = job_dir / run_folder(run["method"]["lr"])
        entry = {"lr": run["method"]["lr"], "run_dir": str(out_dir), "config_hash": config_hash(run)}
        divergence = None
        with logging_to(out_dir / "train.log"):
            try:
                metrics = train_run(
                    run, data_dir, backbone, out_dir, threads, convergence=convergence, evaluate_test=False
                )
            except FloatingPointError as err:  # an outcome of the rate, not a bug: no traceback
                divergence = err
                print(f"diverged: {err}")
        if divergence is not None:  # ranked last; the other rates still decide
            print(f"{out_dir}: diverged: {divergence}", file=sys.stderr)
            return entry | {CRITERION: None, "val_top5": None, "diverged": True, "error": str(divergence)}
        return entry | {
            CRITERION: metrics[CRITERION],
            "val_top5": metrics["val_top5"],
            "diverged": False,
            "epochs": metrics["epochs"],
            "train_time_s": metrics["train_time_s"],
            "converged": metrics.get("converged"),
        }

    first = run_dicts[0]
    val_images = sum(read_json(Path(data_dir) / "manifest.json")["counts_per_class"]["val"])

    def band(results: list[dict[str, Any]]) -> float:
        """One binomial standard error of the best finite top-1 (0 if every rate diverged)."""
        finite = [entry[CRITERION] for entry in results if entry[CRITERION] is not None]
        return standard_error(max(finite), val_images) if finite else 0.0

    grid = [short_run(run) for run in run_dicts]
    extensions = []
    while len(extensions) < max_extensions:
        side = edge(grid, choose(grid, band(grid))["lr"])
        if side is None:
            break
        lr = next_rate(grid, side)
        extensions.append({"lr": lr, "beyond": side})
        print(f"{job_dir}: the choice is the {side} rate tried; trying lr {lr:g}", file=sys.stderr)
        grid.append(short_run(with_lr(RunConfig.from_dict(first), lr).to_dict()))
    best = choose(grid, band(grid))
    choice = {
        "lr": best["lr"],
        "family": parse_method_name(first["method"]["name"])[0],
        "criterion": CRITERION,
        "tie_rule": TIE_RULE,
        "val_images": val_images,
        "tie_band": band(grid),
        "diverged_rule": DIVERGED_RULE,
        "method": first["method"]["name"],
        "model": first["model"]["name"],
        "dataset": first["dataset"],
        "seed": first["seed"],
        "epochs": first["train"]["epochs"],
        "grid": grid,
        "max_extensions": max_extensions,
        "extensions": extensions,
        "at_edge": edge(grid, best["lr"]),
        "provenance": provenance(backbone_weights=str(backbone) if backbone else None),
    }
    write_json(choice_path, choice)
    table = ", ".join(
        f"{entry['lr']:g}: " + ("diverged" if entry["diverged"] else f"{entry[CRITERION]:.2f}%")
        for entry in grid
    )
    print(f"{job_dir}: val top-1 {table}; chose lr {best['lr']:g}", file=sys.stderr)
    return choice
