"""The study's compute, known before it runs: training FLOPs per run, their sum, and the SLURM
runtime request of each training job derived from them.

Convention: a multiply-add counts as 2 FLOPs, and only matrix products are counted (the patch
embedding, every Linear layer, attention's ``q k^T`` and ``attention @ v``, the head), as
``torch.utils.flop_counter.FlopCounterMode`` counts them. Norms, softmax, GELU, residual adds,
dequantization, data augmentation and the optimizer step are left out: a few percent of a ViT's
FLOPs at 224 px, though more of its time, which the assumed sustained throughput
(``compute.gpu_tflops``) has to absorb.

A backward pass costs, for each product the gradient flows through, one forward's worth for the
gradient of each operand that needs one: its input when something trained lies before it, its
weight when that weight is trained. So full fine-tuning costs about twice the forward pass
backwards, a linear probe only its head's weight gradient (no backward through the frozen trunk),
and LoRA-like methods the activation gradients through the trunk (from their first adapter on)
plus the weight gradients of their adapters and head.

This module imports neither torch nor timm: Snakemake imports it when it parses the workflow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitpeft import tune
from vitpeft.architecture import TIMM_VIT, BlockLayout
from vitpeft.config import (
    TRANSFER_BASELINE,
    TRANSFER_REFERENCE,
    ConfigError,
    ModelSpec,
    RunConfig,
    extra_transfer_seeds,
    pretrain_run,
    resolve_run,
    study,
    study_methods,
)
from vitpeft.data.sizes import split_sizes
from vitpeft.device import may_use_cuda
from vitpeft.methods.adalora import AdaLoraConfig
from vitpeft.methods.base import MethodConfig
from vitpeft.methods.linear import LinearConfig
from vitpeft.methods.lora import LoraConfig
from vitpeft.methods.qalora import QALoraConfig

TERA = 1e12


@dataclass(frozen=True)
class PassFlops:
    """FLOPs of one image through the model: its forward pass and its backward pass."""

    forward: float
    backward: float


@dataclass(frozen=True)
class Trained:
    """Which weights a method trains besides the head.

    Attributes:
        backbone: every weight of the backbone (full fine-tuning, training from scratch).
        adapters: block-relative Linear path -> (rank, input pooling) of its low-rank adapter;
            the adapter maps ``in_features / pooling -> rank -> out_features``.
    """

    backbone: bool = False
    adapters: dict[str, tuple[int, int]] | None = None


def trained_weights(method: MethodConfig, layout: BlockLayout = TIMM_VIT) -> Trained:
    """What ``method`` trains, by its config's family.

    A family not known here is costed as full fine-tuning: an upper bound, so that its jobs ask
    for enough time.
    """
    if isinstance(method, LinearConfig):
        return Trained()
    if isinstance(method, LoraConfig):
        # AdaLoRA masks pruned ranks rather than shrinking its matrices: it computes at init_r.
        rank = method.init_r if isinstance(method, AdaLoraConfig) else method.r
        pooling = method.group_size if isinstance(method, QALoraConfig) else 1
        return Trained(adapters={path: (rank, pooling) for path in method.target_paths(layout)})
    return Trained(backbone=True)  # FullConfig (and ScratchConfig), or a family not known here


class _Tally:
    """Forward and backward FLOPs per image, added one matrix product at a time."""

    def __init__(self) -> None:
        self.forward = 0.0
        self.backward = 0.0

    def product(self, flops: float, gradients: int) -> None:
        """A product of ``flops`` forward FLOPs; each of ``gradients`` operand gradients costs as much."""
        self.forward += flops
        self.backward += gradients * flops

    def linear(self, rows: int, n_in: int, n_out: int, weight_trained: bool, input_grad: bool) -> None:
        self.product(2.0 * rows * n_in * n_out, int(weight_trained) + int(input_grad))


def image_flops(model: ModelSpec, method: MethodConfig, num_classes: int) -> PassFlops:
    """Forward and backward FLOPs of one training image through a ViT under ``method``.

    The architecture is timm's (:data:`vitpeft.config.MODEL_ARCHS`) at the spec's input and patch
    size, with the ``embed_dim``, ``depth``, ``mlp_ratio``, ``in_chans``, ``class_token`` and
    ``reg_tokens`` of ``model.kwargs`` where given (other keyword arguments are taken not to
    change the matrix products), or a transformers ViT/DeiT's as its config gives it
    (:meth:`vitpeft.config.ModelSpec.geometry`).
    """
    geometry = model.geometry()
    width, depth, hidden = geometry.width, geometry.depth, geometry.hidden
    patches = (model.img_size // model.patch_size) ** 2
    tokens = patches + geometry.extra_tokens
    layout = model.layout
    shapes = layout.shapes(width, hidden)
    trained = trained_weights(method, layout)
    adapters = trained.adapters or {}
    full = trained.backbone
    tally = _Tally()
    # The patch embedding (a strided convolution): the images need no gradient.
    tally.linear(patches, geometry.in_chans * model.patch_size**2, width, full, input_grad=False)
    stream_grad = full  # whether the residual stream depends on a trained weight

    def layer(path: str, n_in: int, n_out: int, input_grad: bool) -> bool:
        """One block Linear and its adapter, if any; whether its output carries a gradient."""
        tally.linear(tokens, n_in, n_out, full, input_grad)
        if path not in adapters:
            return input_grad or full
        rank, pooling = adapters[path]
        tally.linear(tokens, n_in // pooling, rank, True, input_grad)  # A
        tally.linear(tokens, rank, n_out, True, True)  # B, whose input (A's output) depends on A
        return True

    for _ in range(depth):
        # q, k and v: one fused Linear (timm) or three (transformers)
        qkv_grad = any([layer(p, *shapes[p], stream_grad) for p in layout.roles["attention_qkv"]])
        for _ in ("q k^T", "attention @ v"):  # summed over heads: tokens x tokens x width
            tally.product(2.0 * tokens * tokens * width, 2 * int(qkv_grad))
        (out,), (mlp_in,), (mlp_out,) = (layout.roles[r] for r in ("attention_out", "mlp_in", "mlp_out"))
        stream_grad = layer(out, *shapes[out], qkv_grad) or stream_grad
        hidden_grad = layer(mlp_in, *shapes[mlp_in], stream_grad)
        stream_grad = layer(mlp_out, *shapes[mlp_out], hidden_grad) or stream_grad
    tally.linear(1, width, num_classes, True, stream_grad)  # the head, on the pooled token
    return PassFlops(tally.forward, tally.backward)


def run_flops(run: RunConfig, splits: dict[str, int]) -> float:
    """FLOPs of one training job: ``epochs`` passes over the training split (forward and
    backward), a forward pass over the validation split after each epoch, and one over the test
    split at the end.

    Args:
        splits: images per split and ``classes``, as :func:`vitpeft.data.sizes.split_sizes` gives.
    """
    image = image_flops(run.model, run.method, splits["classes"])
    per_epoch = splits["train"] * (image.forward + image.backward) + splits["val"] * image.forward
    return run.train.epochs * per_epoch + splits["test"] * image.forward


def estimated_flops(config: dict[str, Any], run: RunConfig) -> float:
    """:func:`run_flops` of ``run``, its split sizes derived from the config's dataset entry."""
    return run_flops(run, split_sizes(config["datasets"][run.dataset]))


def study_jobs(config: dict[str, Any]) -> list[list[RunConfig]]:
    """The runs of every training job of the selected study: one job per model x dataset x method
    with all its seeds, one per model x dataset for each of the transfer check's two methods with
    its extra seeds, then one per backbone pretraining, then one per learning-rate tuning (a short
    run per grid value; :func:`tuning_jobs`)."""
    selected = study(config)
    jobs = [
        [resolve_run(config, model, dataset, method, seed) for seed in selected["seeds"]]
        for model in selected["models"]
        for dataset in selected["datasets"]
        for method in study_methods(config)
    ]
    if extra_seeds := extra_transfer_seeds(config):
        jobs += [
            [resolve_run(config, model, dataset, method, seed) for seed in extra_seeds]
            for model in selected["models"]
            for dataset in selected["datasets"]
            for method in (TRANSFER_REFERENCE, TRANSFER_BASELINE)
        ]
    pretrained = [m for m in selected["models"] if config["models"][m]["backbone"]["source"] == "pretrain"]
    return jobs + [[pretrain_run(config, model)] for model in pretrained] + tuning_jobs(config)


def tuning_jobs(config: dict[str, Any]) -> list[list[RunConfig]]:
    """The short runs of every tuning job of the study: one job per tuned family x model x dataset."""
    selected = study(config)
    return [
        tune.tuning_runs(config, model, dataset, family)
        for dataset in selected["datasets"]
        for family in tune.study_families(config)
        for model in selected["models"]
    ]


def study_runs(config: dict[str, Any]) -> list[RunConfig]:
    """Every training run of the selected study, pretraining included."""
    return [run for job in study_jobs(config) for run in job]


def gpu_hours(config: dict[str, Any], flops: float) -> float:
    """Hours that ``flops`` take on one GPU at the config's sustained ``compute.gpu_tflops``."""
    return flops / (config["compute"]["gpu_tflops"] * TERA) / 3600.0


@dataclass(frozen=True)
class MeasuredRates:
    """Training images/s per (model, method, compiled or not, precision), measured on one device
    at one input size: a ``compute.throughput_file`` as ``benchmarks/device_check.py --json``
    writes it, at one batch size. ``auto_precision`` is what ``train.precision: auto`` trains in on
    that device; ``recipe`` is the study whose runs' augmentation, regularization and weight
    average the steps did (``plain``, or a file that does not say: none of them)."""

    path: str
    device: str
    img_size: int
    batch_size: int
    auto_precision: str | None
    recipe: str
    images_per_s: dict[tuple[str, str, bool, str], float]

    @classmethod
    def read(cls, path: str) -> MeasuredRates:
        import json

        try:
            data = json.loads(Path(path).read_text())
            keys = [(r["model"], r["method"], bool(r["compile"]), r["precision"]) for r in data["rates"]]
            twice = sorted({key for key in keys if keys.count(key) > 1})
            if twice:  # which one a run should take is not for us to guess
                raise ValueError(f"measured twice: {twice[0]} (model, method, compile, precision)")
            rates = {
                key: float(r["images_per_s"])
                for key, r in zip(keys, data["rates"], strict=True)
                if r["images_per_s"] > 0
            }
            precisions = {r["precision"] for r in data["rates"]}
            # A file without the field was measured at the device's auto precision only.
            auto = data.get("auto_precision") or (precisions.pop() if len(precisions) == 1 else None)
            recipe = str(data.get("recipe", "plain"))
            sizes = int(data["img_size"]), int(data["batch_size"])
            return cls(str(path), str(data["device"]), *sizes, auto, recipe, rates)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"compute.throughput_file: {path!r} is not a readable benchmarks/device_check.py --json file "
                f"({type(err).__name__}: {err})"
            ) from err


def measured_rates(config: dict[str, Any]) -> MeasuredRates | None:
    """``compute.throughput_file``, read (a file that is not one fails naming the key), or None.
    Measured with another study's recipe, or none, its rates are not this study's: it covers no run."""
    path = config["compute"].get("throughput_file")
    if not path:
        return None
    rates = MeasuredRates.read(path)
    return rates if rates.recipe == config["study"] else dataclasses.replace(rates, images_per_s={})


def measured_images_per_s(rates: MeasuredRates | None, run: RunConfig) -> float | None:
    """The measured training rate of ``run``'s model and method at its input size and batch size,
    compiled or not and at the precision it trains in (``auto``: the measured device's), if the file
    has it (scratch trains as full fine-tuning does, so it takes full's)."""
    if rates is None or (run.model.img_size, run.train.batch_size) != (rates.img_size, rates.batch_size):
        return None
    method = TRANSFER_REFERENCE if run.method.name == TRANSFER_BASELINE else run.method.name
    precision = rates.auto_precision if run.train.precision == "auto" else run.train.precision
    return rates.images_per_s.get((run.model.name, method, run.train.compile, precision))


def run_hours(config: dict[str, Any], run: RunConfig, rates: MeasuredRates | None = None) -> float:
    """One GPU's hours for ``run``: its FLOPs at the FLOP/s its model and method sustained where
    ``rates`` measured them (images/s times a training image's FLOPs), else at the assumed
    ``compute.gpu_tflops``."""
    flops = estimated_flops(config, run)
    images_per_s = measured_images_per_s(rates, run)
    if images_per_s is None:
        return gpu_hours(config, flops)
    image = image_flops(run.model, run.method, split_sizes(config["datasets"][run.dataset])["classes"])
    return flops / (images_per_s * (image.forward + image.backward)) / 3600.0


def runtime_minutes(config: dict[str, Any], runs: Sequence[RunConfig], attempt: int = 1) -> int:
    """A GPU training job's wall-time request: the estimate of its runs (trained one after another,
    :func:`run_hours`) times ``resources.runtime_margin``, at least ``resources.min_runtime``
    minutes (start-up, data loading, scheduler), times ``attempt``; rounded up."""
    section = config["resources"]
    rates = measured_rates(config)
    estimate = 60.0 * sum(run_hours(config, run, rates) for run in runs)
    return math.ceil(max(section["min_runtime"], section["runtime_margin"] * estimate) * attempt)


def job_gpus(config: dict[str, Any]) -> int:
    """GPUs a training job asks a scheduler for: ``resources.gpu`` where its ``device`` may be
    CUDA (``cuda`` or ``auto``); none for ``cpu`` or ``mps``, which train without a booked GPU."""
    return config["resources"]["gpu"] if may_use_cuda(config.get("device", "auto")) else 0


def job_resources(
    config: dict[str, Any], runs: RunConfig | Sequence[RunConfig], attempt: int = 1
) -> dict[str, int]:
    """What one training or pretrain job asks a scheduler for; its ``runs`` (one, or every seed of
    a model x dataset x method) train one after another on the same device.

    ``resources.models`` gives a model's memory (and, for a CPU study, wall time per run) on a
    dataset of factor 1 (``resources.default`` for a model not listed); ``resources.datasets``
    scales them per dataset (factor 1 for a dataset not listed). A GPU study (:func:`job_gpus` > 0)
    asks for the wall time of :func:`runtime_minutes` instead, derived from the runs' FLOPs. A retry
    (``attempt`` 2, 3, ...) asks for that many times more memory and time, so a job killed by
    the scheduler can succeed when resubmitted (it resumes from its last saved state).

    Returns:
        ``mem_mb`` (MiB, the largest run's) and ``runtime`` (minutes, all runs), rounded up, and
        ``gpu`` (:func:`job_gpus`: 0 for a CPU or MPS study).
    """
    runs = [runs] if isinstance(runs, RunConfig) else list(runs)
    section = config["resources"]
    memory, minutes = [], 0.0
    for run in runs:
        base = section["models"].get(run.model.name, section["default"])
        factors = section["datasets"].get(run.dataset, {})
        memory.append(math.ceil(base["mem_mb"] * factors.get("mem_mb", 1.0) * attempt))
        minutes += base.get("runtime", section["default"]["runtime"]) * factors.get("runtime", 1.0)
    gpus = job_gpus(config)
    runtime = runtime_minutes(config, runs, attempt) if gpus > 0 else math.ceil(minutes * attempt)
    return {"mem_mb": max(memory), "runtime": runtime, "gpu": gpus}


@dataclass(frozen=True)
class StudyEstimate:
    """The selected study's training compute, estimated from its config.

    Attributes:
        runs: training, pretraining and tuning runs.
        jobs: the jobs they train in (:func:`study_jobs`).
        flops: the runs' summed FLOPs (:func:`run_flops`).
        gpu_tflops: the assumed sustained throughput of one GPU, TFLOP/s (``compute.gpu_tflops``).
        gpu_hours: those FLOPs at that throughput.
        tuning_runs, tuning_flops: the learning-rate tuning's share of ``runs`` and ``flops``.
        measured_runs: the runs whose hours come from measured images/s (``compute.throughput_file``,
            measured on ``measured_on`` with ``measured_recipe``) instead of the assumed ``gpu_tflops``.
    """

    runs: int
    jobs: int
    flops: float
    gpu_tflops: float
    gpu_hours: float
    tuning_runs: int = 0
    tuning_flops: float = 0.0
    measured_runs: int = 0
    throughput_file: str = ""
    measured_on: str = ""
    measured_recipe: str = ""


def estimate_study(config: dict[str, Any]) -> StudyEstimate:
    """Sum :func:`run_flops` and :func:`run_hours` over every training run of the study, the tuning
    runs included."""
    jobs = study_jobs(config)
    every_run = [run for runs in jobs for run in runs]
    rates = measured_rates(config)
    tuning = [run for runs in tuning_jobs(config) for run in runs]
    return StudyEstimate(
        len(every_run),
        len(jobs),
        sum(estimated_flops(config, run) for run in every_run),
        config["compute"]["gpu_tflops"],
        sum(run_hours(config, run, rates) for run in every_run),
        tuning_runs=len(tuning),
        tuning_flops=sum(estimated_flops(config, run) for run in tuning),
        measured_runs=sum(measured_images_per_s(rates, run) is not None for run in every_run),
        throughput_file=rates.path if rates else "",
        measured_on=rates.device if rates else "",
        measured_recipe=rates.recipe if rates else "",
    )


def requested_gpu_hours(config: dict[str, Any]) -> float:
    """The study's training jobs' runtime requests times their GPUs, summed: what a cluster books."""
    jobs = (job_resources(config, runs) for runs in study_jobs(config))
    return sum(job["runtime"] * job["gpu"] for job in jobs) / 60.0


def throughput_source(estimate: StudyEstimate) -> str:
    """Where the estimate's hours come from: measured rates, the assumed TFLOP/s, or both."""
    assumed = f"a sustained {estimate.gpu_tflops:g} TFLOP/s per GPU (compute.gpu_tflops)"
    measured = (
        f"the images/s measured on {estimate.measured_on} with the {estimate.measured_recipe} study's recipe "
        f"(compute.throughput_file {estimate.throughput_file})"
    )
    if not estimate.throughput_file:
        return assumed
    if not estimate.measured_runs:
        return (
            f"{assumed}; compute.throughput_file {estimate.throughput_file} measures none of its runs' "
            f"model, method, input size, batch size, compilation and precision with this study's "
            f"recipe (it was measured with {estimate.measured_recipe!r})"
        )
    if estimate.measured_runs == estimate.runs:
        return f"{measured} for every run"
    return f"{measured} for {estimate.measured_runs} of the {estimate.runs} runs, {assumed} for the others"


def summary(config: dict[str, Any], estimate: StudyEstimate) -> str:
    """One line for the workflow's log: the study's estimated compute (:func:`estimate_study`)
    and what its jobs request."""
    line = (
        f"vitpeft: the {config['study']} study's {estimate.runs} training runs ({estimate.jobs} jobs) "
        f"need an estimated "
        f"{estimate.flops:.3g} FLOPs ({estimate.tuning_runs} short tuning runs: "
        f"{estimate.tuning_flops / estimate.flops:.0%}), {estimate.gpu_hours:.3g} GPU-hours: "
        + throughput_source(estimate)
    )
    resources = config["resources"]
    if job_gpus(config) > 0:
        return (
            f"{line}; their SLURM runtime requests add up to {requested_gpu_hours(config):.3g} GPU-hours "
            f"(resources.runtime_margin {resources['runtime_margin']:g}, "
            f"at least resources.min_runtime {resources['min_runtime']} min per job)"
        )
    if resources["gpu"] > 0:  # booked for nothing: the device is the CPU or MPS
        return (
            f"{line}; its jobs train on device {config['device']!r} and book no GPU (resources.gpu "
            f"{resources['gpu']} is for CUDA), their runtime requests are the measured ones of resources"
        )
    return (
        f"{line}; it runs on CPU (resources.gpu: 0), its runtime requests are the measured ones of resources"
    )
