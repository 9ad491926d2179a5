"""One training run end to end, and the backbone pretraining: what the train and pretrain rules call."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vitpeft import device as devices
from vitpeft.config import RunConfig
from vitpeft.convergence import ConvergenceCriterion
from vitpeft.data import arrays
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.io import (
    atomic_path,
    config_hash,
    logging_to,
    provenance,
    read_json,
    remove_partial_writes,
    sha256_file,
    write_json,
)
from vitpeft.memory import PhasePeaks
from vitpeft.methods import prepare_model
from vitpeft.methods.base import MethodContext, Prepared
from vitpeft.models import count_parameters, create_model, save_backbone
from vitpeft.resume import ResumeFile
from vitpeft.train import History, Split, evaluate, fit, steps_per_epoch

PROBE_SIZE = 64  # validation images in the fixed batch for numerical checks (quantization error)
RESUME_NAME = "resume.pt"  # beside a run's outputs, not one of them (see vitpeft.resume)


def seed_everything(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def load_splits(data_dir: str | Path, device: torch.device, final: bool = False) -> dict[str, Split]:
    """Verify the prepared dataset's checksums, then hold every split on ``device``.

    Args:
        final: a study run (not a tuning run): its ``train`` split is then the manifest's
            ``final_train`` splits together (VTAB-1k: train800 and val200), where it names them.
    """
    arrays.verify(data_dir)
    loaded = {name: arrays.load_split(data_dir, name) for name in arrays.SPLITS}
    if final:
        parts = [loaded[name] for name in arrays.final_train_splits(arrays.load_manifest(data_dir))]
        loaded["train"] = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    return {
        name: Split(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device))
        for name, (images, labels) in loaded.items()
    }


def build_model(run: RunConfig, num_classes: int, backbone: str | Path | None) -> nn.Module:
    """The run's model before the method touches it, with weights from the configured source."""
    drop_path_rate = run.train.drop_path_rate
    if not run.method.uses_pretrained_backbone:
        return create_model(run.model, num_classes, drop_path_rate=drop_path_rate)
    if run.model.backbone["source"] in ("timm", "hf"):  # weights from the hub, or an hf folder
        return create_model(run.model, num_classes, hub=True, drop_path_rate=drop_path_rate)
    if backbone is None:
        raise ValueError(f"{run.method.name} needs backbone weights from {run.model.backbone}, got none")
    return create_model(run.model, num_classes, weights=backbone, drop_path_rate=drop_path_rate)


def preprocessor(model: nn.Module, run: RunConfig) -> BatchPreprocessor:
    """Normalize with the mean and std of the architecture's pretrained config."""
    cfg = model.pretrained_cfg
    return BatchPreprocessor(
        run.model.img_size, cfg["mean"], cfg["std"], run.augment, num_classes=model.num_classes
    )


@dataclass
class Trained:
    """What a finished training leaves for evaluation and the records."""

    model: nn.Module
    splits: dict[str, Split]
    preprocess: BatchPreprocessor
    params: dict[str, Any]
    report: dict[str, Any]
    history: History
    train_time_s: float
    device: torch.device
    memory: PhasePeaks  # the phases "train" and "eval" of this attempt; the test pass goes on it


def resume_file(
    run_dict: dict[str, Any], data_dir: str | Path, backbone: str | Path | None, path: Path, every: int
) -> ResumeFile:
    """The run's resume state at ``path``, keyed by the config, the data and the backbone weights."""
    key = config_hash(
        {
            "run": run_dict,
            "data": sha256_file(Path(data_dir) / "manifest.json"),
            "backbone": sha256_file(backbone) if backbone else None,
        }
    )
    return ResumeFile(path, every, key)


def _set_up(
    run: RunConfig, data_dir, backbone, device: torch.device, probe: bool, final: bool
) -> tuple[Prepared, dict[str, Split], BatchPreprocessor]:
    """The run's data on ``device`` and its model as the method prepares it, before any training.

    Args:
        probe: hand the method a fixed validation batch for its numerical checks (quantization
            error); not needed to rebuild a finished run.
        final: a study run, which trains on the manifest's ``final_train`` (:func:`load_splits`).
    """
    splits = load_splits(data_dir, device, final)
    num_classes = len(arrays.load_manifest(data_dir)["class_names"])
    model = build_model(run, num_classes, backbone).to(device)
    preprocess = preprocessor(model, run)
    context = MethodContext(
        total_steps=run.train.epochs * steps_per_epoch(len(splits["train"]), run.train),
        device=device,
        probe_batch=preprocess(splits["val"].images[:PROBE_SIZE], train=False) if probe else None,
    )
    prepared = prepare_model(model, run.method, context)
    prepared.model.to(device)
    return prepared, splits, preprocess


def _train(
    run: RunConfig,
    data_dir,
    backbone,
    threads,
    desc,
    resume: ResumeFile,
    requested_device: str,
    final: bool,
) -> Trained:
    seed_everything(run.seed, threads)
    device = devices.select(requested_device)
    print(
        f"{desc}: {devices.describe(device, run.train.precision)} (config device: {requested_device}, "
        f"train.precision: {run.train.precision})",
        file=sys.stderr,
    )
    memory = PhasePeaks(device)
    prepared, splits, preprocess = _set_up(run, data_dir, backbone, device, probe=True, final=final)
    params = count_parameters(prepared.model)
    print(f"{desc}: {params['trainable']:,} trainable of {params['total']:,} parameters", file=sys.stderr)
    started = time.perf_counter()
    history = fit(
        prepared,
        splits["train"],
        splits["val"],
        preprocess,
        run.train,
        run.method.lr,
        run.method.weight_decay,
        run.seed,
        desc=desc,
        ema_decay=run.method.ema_decay,
        resume=resume,
        memory=memory,
    )
    return Trained(
        prepared.model,
        splits,
        preprocess,
        params,
        prepared.report,
        history,
        resume.time_before_s + time.perf_counter() - started,
        device,
        memory,
    )


def train_run(
    run_dict: dict[str, Any],
    data_dir: str | Path,
    backbone: str | Path | None,
    out_dir: str | Path,
    threads: int | None = None,
    checkpoint_every: int = 0,
    convergence: dict[str, Any] | None = None,
    keep_resume: bool = False,
    device: str = "auto",
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one run; write ``metrics.json``, ``config.json``, ``provenance.json`` and
    ``checkpoint.safetensors`` (the trainable parameters) into ``out_dir``.

    Accuracies are in percent. The test split is evaluated once, with the final weights, unless
    ``evaluate_test`` is False (a tuning run: its metrics then hold no test field).

    Every ``checkpoint_every`` optimizer steps the resume state goes to ``out_dir/resume.pt``; a
    rerun of a killed job (``--rerun-incomplete``, or a SLURM requeue) goes on from it and ends with
    the same metrics, apart from time and memory. It is deleted once the outputs are written,
    unless ``keep_resume``: then it holds the finished training (saved at the last step too), so
    that a rerun of a job of several runs killed after this one only re-evaluates it.

    ``convergence`` (the config's section; its defaults if None) judges the validation curve, the
    whole one even after a resume (the curves are part of the resume state); the verdict and the
    criterion go into the metrics (:meth:`ConvergenceCriterion.judge`).

    ``device`` is the config's (:func:`vitpeft.device.select`); the one used goes into the
    provenance.
    """
    criterion = ConvergenceCriterion(**(convergence or {}))
    run = RunConfig.from_dict(run_dict)
    out_dir = Path(out_dir)
    desc = f"{run.method.name}/{run.model.name}/{run.dataset}/seed{run.seed}"
    remove_partial_writes(out_dir)  # a killed attempt's; its resume state, if any, is kept
    resume = resume_file(run_dict, data_dir, backbone, out_dir / RESUME_NAME, checkpoint_every)
    resume.save_last_step = keep_resume
    # A study run evaluates test; a tuning run does not, and trains on train alone.
    trained = _train(run, data_dir, backbone, threads, desc, resume, device, final=evaluate_test)
    model, splits, params, history = trained.model, trained.splits, trained.params, trained.history
    train_time = trained.train_time_s
    tested = {}
    if evaluate_test:
        with trained.memory.phase("eval"):
            test = evaluate(model, splits["test"], trained.preprocess, run.train.eval_batch_size)
        tested = {"test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"]}
    metrics = {
        "method": run.method.name,
        "model": run.model.name,
        "dataset": run.dataset,
        "seed": run.seed,
        **tested,
        "val_top1": history.val_top1[-1],  # the final weights, evaluated after the last epoch
        "val_top5": history.val_top5[-1],
        "trainable_params": params["trainable"],
        "total_params": params["total"],
        "trainable_pct": 100.0 * params["trainable"] / params["total"],
        "params_by_type": params["by_type"],
        "train_time_s": train_time,
        "train_images_per_s": run.train.epochs * len(splits["train"]) / train_time,
        "train_images": len(splits["train"]),
        "train_splits": arrays.final_train_splits(arrays.load_manifest(data_dir))
        if evaluate_test
        else ["train"],
        # Memory is of the last attempt when a run was resumed; see vitpeft.memory.
        "train_peak_mem_mb": trained.memory.peaks["train"],
        "eval_peak_mem_mb": trained.memory.peaks["eval"],
        "peak_mem_mb": trained.memory.process_peak_mb(),  # the job process: setup, training, evaluation, earlier seeds
        "micro_batch_size": history.micro_batch_size[-1],
        "accumulation_steps": math.ceil(run.train.batch_size / history.micro_batch_size[-1]),
        "oom_backoffs": sum(history.oom_backoffs),
        "epochs": run.train.epochs,
        "lr": run.method.lr,  # the peak rate it trained at: tuned (vitpeft.tune) or the config's
        "grad_clip": run.train.grad_clip,  # 0: no clipping, and no clipped steps to report
        **criterion.judge(history.val_top1),
        "backbone": run.model.backbone["source"] if run.method.uses_pretrained_backbone else "scratch",
        "config_hash": config_hash(run_dict),
        "data_manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
        **trained.report,
        "curves": dataclasses.asdict(history),
    }
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_path(out_dir / "checkpoint.safetensors") as tmp:
        save_file(trainable, str(tmp))
    write_json(out_dir / "config.json", run_dict)
    write_json(
        out_dir / "provenance.json",
        provenance(
            device=str(trained.device),  # the one used, whatever the config asked
            device_requested=device,
            precision=devices.training_precision(trained.device, run.train.precision),
            precision_requested=run.train.precision,
            threads=torch.get_num_threads(),
            backbone_weights=str(backbone) if backbone else None,
        ),
    )
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks the run complete
    if not keep_resume:
        resume.remove()
    scored = f"test top-1 {test['top1']:.2f}%" if evaluate_test else f"val top-1 {metrics['val_top1']:.2f}%"
    print(f"{desc}: {scored}  ({train_time:.1f} s)", file=sys.stderr)
    return metrics


def train_runs(
    run_dicts: list[dict[str, Any]],
    data_dir: str | Path,
    backbone: str | Path | None,
    out_dirs: list[str | Path],
    logs: list[str | Path],
    threads: int | None = None,
    checkpoint_every: int = 0,
    convergence: dict[str, Any] | None = None,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """:func:`train_run` for each run in turn, in this process, each logging to its own file.

    The rule train's job: one model x dataset x method, every seed. Each run is seeded and set up
    afresh, so it ends as it would in a process of its own. The resume states are kept until every
    run is written: Snakemake deletes a job's outputs before rerunning it, so after a kill a
    finished run goes on from its final state (a test pass) instead of training again.
    """
    if not len(run_dicts) == len(out_dirs) == len(logs):
        raise ValueError(f"{len(run_dicts)} runs, {len(out_dirs)} folders and {len(logs)} logs")
    results = []
    for run_dict, out_dir, log in zip(run_dicts, out_dirs, logs, strict=True):
        with logging_to(log):
            results.append(
                train_run(
                    run_dict,
                    data_dir,
                    backbone,
                    out_dir,
                    threads,
                    checkpoint_every,
                    convergence,
                    keep_resume=True,
                    device=device,
                )
            )
        print(f"{log}: test top-1 {results[-1]['test_top1']:.2f}%", file=sys.stderr)
    for out_dir in out_dirs:
        (Path(out_dir) / RESUME_NAME).unlink(missing_ok=True)
    return results


def pretrain_backbone(
    run_dict: dict[str, Any],
    data_dir: str | Path,
    weights_out: str | Path,
    meta_out: str | Path,
    threads: int | None = None,
    checkpoint_every: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Train the backbone from random init on the source dataset; save weights and a record.

    Resumable like :func:`train_run`; the state sits beside the weights as ``<name>.resume.pt``.
    """
    run = RunConfig.from_dict(run_dict)
    desc = f"pretrain/{run.model.name}/{run.dataset}"
    weights_out = Path(weights_out)
    state = weights_out.with_name(f"{weights_out.stem}.{RESUME_NAME}")
    resume = resume_file(run_dict, data_dir, None, state, checkpoint_every)
    trained = _train(run, data_dir, None, threads, desc, resume, device, final=False)
    model, history, train_time = trained.model, trained.history, trained.train_time_s
    test = evaluate(model, trained.splits["test"], trained.preprocess, run.train.eval_batch_size)
    meta = {
        "run": run_dict,
        "source_test_top1": test["top1"],
        "train_time_s": train_time,
        "curves": dataclasses.asdict(history),
        "data_manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
        "provenance": provenance(device=str(trained.device)),
    }
    save_backbone(model, weights_out, meta_out, meta)
    resume.remove()
    print(f"{desc}: source test top-1 {test['top1']:.2f}% ({train_time:.1f} s)", file=sys.stderr)
    return meta


@dataclass
class Restored:
    """A finished run's model rebuilt from its config, backbone and checkpoint, with its data."""

    run: RunConfig
    model: nn.Module
    splits: dict[str, Split]
    preprocess: BatchPreprocessor


def load_trained(
    run_dir: str | Path, data_dir: str | Path, backbone: str | Path | None, device: str = "cpu"
) -> Restored:
    """Rebuild the model that ``train_run`` left in ``run_dir``: the backbone, the method, then the
    saved trainable parameters. Every checkpoint tensor must land on a trainable parameter and
    every trainable parameter must be in the checkpoint.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    run = RunConfig.from_dict(read_json(run_dir / "config.json"))
    seed_everything(run.seed)
    device = torch.device(device)
    # Only a study run is exported: rebuilt on the splits it trained on (AdaLoRA's schedule counts them).
    prepared, splits, preprocess = _set_up(run, data_dir, backbone, device, probe=False, final=True)
    model = prepared.model
    state = load_file(str(run_dir / "checkpoint.safetensors"), device=str(device))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != trainable:
        raise RuntimeError(
            f"{run_dir}: checkpoint and trainable parameters differ: {sorted(set(state) ^ trainable)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return Restored(run, model.eval(), splits, preprocess)
