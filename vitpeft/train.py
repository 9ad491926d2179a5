"""The one trainer every method goes through: AdamW on the trainable parameters only, linear
warmup then cosine decay, gradient clipping, an optional moving average of the weights, per-epoch
validation, tqdm progress with images/s, a resume state every few steps, and a smaller
micro-batch (same batch) when memory runs out."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from vitpeft import device as devices
from vitpeft.config import TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.memory import PhasePeaks
from vitpeft.methods.base import Prepared
from vitpeft.resume import ResumeFile, capture_rng, load_trainable_state, restore_rng, trainable_state
from vitpeft.stability import StabilityMeter

# Seconds between the progress bar's refreshes: the training loop reads the running loss from the
# device (and checks it is finite) only then, at an epoch's end and before a resume state.
SHOW_EVERY_S = 5.0


@dataclass
class Split:
    """A split held in memory as uint8 images ``(N, H, W, C)`` and int64 labels, on the device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class History:
    """Per-epoch curves, for the convergence figures."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_top1: list[float] = field(default_factory=list)
    val_top5: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # per-epoch records of the method's own
    micro_batch_size: list[int] = field(default_factory=list)  # at the epoch's end (OOM backoffs halve it)
    oom_backoffs: list[int] = field(default_factory=list)  # out-of-memory backoffs in the epoch
    # Gradient stability (vitpeft.stability.StabilityMeter.epoch_summary): the global gradient
    # norm before clipping, the fraction of steps clipped, the steps whose loss spiked.
    grad_norm_mean: list[float] = field(default_factory=list)
    grad_norm_max: list[float] = field(default_factory=list)
    clipped_fraction: list[float] = field(default_factory=list)
    loss_spikes: list[int] = field(default_factory=list)
    # fp16: the steps the gradient scaler skipped, their scaled gradients having overflowed
    skipped_steps: list[int] = field(default_factory=list)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only; no decay on norms, biases, embeddings, tokens (1-D or listed by the
    model) and AdaLoRA's singular values (``lora_E``, scalars stored as an (r, 1) matrix)."""
    no_decay_names = set()
    for module in model.modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            no_decay_names |= set(module.no_weight_decay())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.rsplit(".", 1)[-1] in no_decay_names or ".lora_E." in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup from 0 to the peak lr, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, preprocess: BatchPreprocessor, batch_size: int
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent, and mean cross-entropy, over a whole split, outside
    autocast: in fp32 (on CUDA without TF32)."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
    with devices.exact_fp32(split.images.device):
        for start in range(0, len(split), batch_size):
            x = preprocess(split.images[start : start + batch_size], train=False)
            y = split.labels[start : start + batch_size]
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
    n = len(split)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}


def steps_per_epoch(num_images: int, cfg: TrainConfig) -> int:
    """Optimizer steps per epoch; the last batch of an epoch may be smaller."""
    return math.ceil(num_images / cfg.batch_size)


@dataclass
class Position:
    """Where training stands within an epoch, and that epoch's running sums.

    Attributes:
        epoch: the epoch in progress, from 1.
        step: optimizer steps done in this epoch.
        global_step: optimizer steps done in all.
        order: this epoch's shuffled image indices (drawn at the epoch's start).
        loss_sum, seen: summed training loss (on the device while the epoch runs, so that no
            step waits for it) and images of this epoch so far.
        micro_size: images per micro-batch now (halved on each out-of-memory backoff).
        oom_backoffs: backoffs in this epoch.
    """

    epoch: int
    micro_size: int
    step: int = 0
    global_step: int = 0
    order: torch.Tensor | None = None
    loss_sum: float | torch.Tensor = 0.0
    seen: int = 0
    oom_backoffs: int = 0


def fit(
    method: Prepared,
    train: Split,
    val: Split,
    preprocess: BatchPreprocessor,
    cfg: TrainConfig,
    lr: float,
    weight_decay: float,
    seed: int,
    desc: str = "train",
    resume: ResumeFile | None = None,
    memory: PhasePeaks | None = None,
    ema_decay: float = 0.0,
) -> History:
    """Train ``method.model`` in place for ``cfg.epochs`` epochs; validate after each one.

    Each optimizer step sees ``cfg.batch_size`` images, in ``cfg.accumulation_steps`` micro-batches
    whose gradients add up to the full batch's. The method's hooks run at their points. When a step
    runs out of memory, the micro-batch is halved (so the accumulation doubles, and the batch per
    optimizer step stays the same) and the step is redone from the same random state.

    With ``resume``, the state is saved every ``resume.every`` optimizer steps, and a saved state
    of the same run is loaded first: training goes on from it as if it had never stopped.

    With ``memory``, the peak of the training steps is recorded as its phase ``"train"`` and that
    of the per-epoch validation as ``"eval"``.

    With ``ema_decay`` > 0, an exponential moving average of the weights (timm's ``ModelEmaV3``,
    constant decay) follows every optimizer step. It is what each epoch validates, and at the end
    its weights replace the trained ones in ``method.model``: what is then tested, saved and
    exported is the average, as in timm's training script (and SSF's, which reports it).

    Raises:
        FloatingPointError: the loss is NaN or infinite; training stops there.
    """
    model = method.model
    device = train.images.device
    generator = torch.Generator().manual_seed(seed)
    # fused AdamW: one kernel for all tensors where torch has it; on CPU the reference loop
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=devices.fused_adamw(device))
    forward = torch.compile(model) if cfg.compile else model  # the same parameters, compiled graphs
    per_epoch = steps_per_epoch(len(train), cfg)
    scheduler = warmup_cosine(optimizer, round(cfg.warmup_epochs * per_epoch), cfg.epochs * per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = devices.autocast(device, cfg.precision)
    scaler = devices.grad_scaler(device, cfg.precision)  # a no-op unless the precision is fp16
    history = History()
    stability = StabilityMeter(device, cfg.grad_clip, num_classes=int(train.labels.max()) + 1)
    fit_started = time.perf_counter()
    at = Position(epoch=1, micro_size=math.ceil(cfg.batch_size / cfg.accumulation_steps))
    saved = resume.load() if resume is not None else None
    phase = memory.phase if memory is not None else lambda _: contextlib.nullcontext()
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay > 0 else None  # a copy, from the start
    if saved is not None:
        at, history = _restore(saved, method, optimizer, scheduler, generator, ema)
        if saved.get("scaler"):  # empty when saved without a scaler (another device's precision)
            scaler.load_state_dict(saved["scaler"])
        if "stability" in saved:  # a state saved before the meter existed starts it afresh
            stability.load_state(saved["stability"])
        print(
            f"{desc}: resuming from {resume.path} at step {at.global_step} of {cfg.epochs * per_epoch}",
            file=sys.stderr,
            flush=True,
        )

    # The first non-finite objective (its global step, or -1, and its value), kept on the device:
    # the host reads it, and the running loss, only where it waits anyway (see ``check_finite``).
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    first_bad_value = torch.zeros((), device=device)

    def forward_backward(batch: torch.Tensor, micro_size: int) -> torch.Tensor:
        """Gradients of one optimizer step's batch; returns its summed task loss on the device."""
        nonlocal first_bad_step, first_bad_value
        loss_sum = torch.zeros((), device=device)
        for micro in batch.split(micro_size):
            x = preprocess(train.images[micro], train=True, generator=generator)
            x, target = preprocess.mix(x, train.labels[micro])
            with autocast:
                loss = F.cross_entropy(forward(x).float(), target, label_smoothing=cfg.label_smoothing)
                objective = loss if method.extra_loss is None else loss + method.extra_loss()
            new_bad = (first_bad_step < 0) & ~torch.isfinite(objective.detach())
            first_bad_step = torch.where(new_bad, at.global_step + 1, first_bad_step)
            first_bad_value = torch.where(new_bad, objective.detach().float(), first_bad_value)
            scaler.scale(objective * (len(micro) / len(batch))).backward()
            loss_sum += loss.detach() * len(micro)
        return loss_sum

    def check_finite() -> None:
        """Stop at a non-finite loss seen so far, naming where it first was; before anything that
        would keep the weights it made (a resume state, an epoch's record)."""
        bad = int(first_bad_step)  # a sync
        if bad >= 0:
            raise FloatingPointError(
                f"{desc}: stopping, the loss is {float(first_bad_value)} at epoch {(bad - 1) // per_epoch + 1}, "
                f"step {(bad - 1) % per_epoch + 1} of {per_epoch}; no result is written"
            )

    while at.epoch <= cfg.epochs:
        model.train()
        if at.order is None:
            at.order = torch.randperm(len(train), generator=generator)
        order = at.order.to(device)
        started, seen_before = time.perf_counter(), at.seen
        shown = started
        bar = tqdm(
            range(at.step, per_epoch),
            desc=f"{desc} epoch {at.epoch}/{cfg.epochs}",
            initial=at.step,
            total=per_epoch,
            file=sys.stderr,
            mininterval=SHOW_EVERY_S,
            ascii=True,
        )
        with phase("train"):
            for step in bar:
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                before = capture_rng(generator)
                while True:
                    optimizer.zero_grad(set_to_none=True)
                    try:
                        loss_sum = forward_backward(batch, at.micro_size)
                        break
                    except torch.OutOfMemoryError:
                        if at.micro_size == 1:
                            raise
                    # Retried outside the except block, so the failed attempt's tensors are freed.
                    at.micro_size, at.oom_backoffs = math.ceil(at.micro_size / 2), at.oom_backoffs + 1
                    restore_rng(before, generator)
                    devices.empty_cache(device)
                    print(
                        f"{desc}: out of memory; micro-batch now {at.micro_size} images, "
                        f"{math.ceil(cfg.batch_size / at.micro_size)} per step of {cfg.batch_size}",
                        file=sys.stderr,
                        flush=True,
                    )
                scaler.unscale_(optimizer)  # fp16: the true gradients, to record and to clip
                if cfg.grad_clip > 0:  # the norm before clipping, computed to clip
                    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                else:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in trainable if p.grad is not None]
                    )
                # fp16 overflow: the scaler skips the step (and halves its scale); not a divergence.
                # What follows a step sees no skipped one: its gradients are inf or NaN, and the
                # schedule moves on optimizer steps taken (one sync, in fp16 only).
                skipped = scaler.is_enabled() and not bool(grad_norm.isfinite())
                stability.record(loss_sum / len(batch), grad_norm, skipped=skipped)
                scaler.step(optimizer)
                scaler.update()
                if not skipped:
                    scheduler.step()
                at.step, at.global_step = step + 1, at.global_step + 1
                at.loss_sum, at.seen = at.loss_sum + loss_sum, at.seen + len(batch)
                if method.after_step is not None:  # before zero_grad: AdaLoRA reads the gradients
                    method.after_step(at.global_step, skipped)
                if ema is not None and not skipped:
                    ema.update(model)
                optimizer.zero_grad(set_to_none=True)  # validation and the resume state need no gradients
                if resume is not None and resume.due(at.global_step, cfg.epochs * per_epoch):
                    check_finite()
                    resume.save(
                        _snapshot(at, history, method, optimizer, scheduler, generator, ema)
                        | {"stability": stability.state(), "scaler": scaler.state_dict()},
                        train_time_s=resume.time_before_s + time.perf_counter() - fit_started,
                    )
                if time.perf_counter() - shown >= SHOW_EVERY_S:  # the bar's refresh: a sync
                    check_finite()
                    shown = time.perf_counter()
                    rate = (at.seen - seen_before) / (shown - started)
                    bar.set_postfix(loss=f"{float(at.loss_sum) / at.seen:.3f}", img_s=f"{rate:.0f}")
        check_finite()
        at.loss_sum = float(at.loss_sum)
        rate = (at.seen - seen_before) / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{at.loss_sum / at.seen:.3f}", img_s=f"{rate:.0f}", refresh=False)
        bar.close()
        with phase("eval"):
            metrics = evaluate(model if ema is None else ema.module, val, preprocess, cfg.eval_batch_size)
        history.epoch.append(at.epoch)
        history.train_loss.append(at.loss_sum / at.seen)
        history.val_top1.append(metrics["top1"])
        history.val_top5.append(metrics["top5"])
        history.val_loss.append(metrics["loss"])
        history.lr.append(optimizer.param_groups[0]["lr"])
        history.micro_batch_size.append(at.micro_size)
        history.oom_backoffs.append(at.oom_backoffs)
        for name, value in stability.epoch_summary().items():
            getattr(history, name).append(value)
        if method.epoch_record is not None:
            history.records.append(method.epoch_record())
        print(
            f"{desc} epoch {at.epoch}: train_loss {at.loss_sum / at.seen:.4f}  val_top1 {metrics['top1']:.2f}  "
            f"({(at.seen - seen_before) / (time.perf_counter() - started):.0f} img/s)",
            file=sys.stderr,
            flush=True,
        )
        at = Position(epoch=at.epoch + 1, micro_size=at.micro_size, global_step=at.global_step)
    if ema is not None:  # frozen weights are equal in both; the trained ones become the average
        load_trainable_state(model, trainable_state(ema.module))
    return history


def _snapshot(at, history, method, optimizer, scheduler, generator, ema) -> dict:
    """Everything :func:`fit` needs to go on from here (see :mod:`vitpeft.resume`)."""
    return {
        "position": {**dataclasses.asdict(at), "order": at.order, "loss_sum": float(at.loss_sum)},
        "history": dataclasses.asdict(history),
        "model": trainable_state(method.model),
        "method": method.state() if method.state is not None else {},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(generator),
        "ema": trainable_state(ema.module) if ema is not None else {},
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``state``'s moments, step counts and hyperparameters into ``optimizer``, which keeps how it
    computes on this device: torch would restore the saved ``fused`` and ``foreach`` too, and a
    state saved on the CPU (reference loop) would then run unfused on CUDA, where a gradient
    scaler hands its inf check to a fused step that is not there, and fails."""
    kernels = {key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group.update(kernels)


def _restore(saved, method, optimizer, scheduler, generator, ema) -> tuple[Position, History]:
    load_trainable_state(method.model, saved["model"])
    if ema is not None:
        load_trainable_state(ema.module, saved["ema"])
    if method.load_state is not None:
        method.load_state(saved["method"])
    load_optimizer_state(optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    restore_rng(saved["rng"], generator)
    return Position(**saved["position"]), History(**saved["history"])
