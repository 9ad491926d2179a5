"""The one trainer every method goes through: AdamW on the trainable parameters only, linear
warmup then cosine decay, gradient clipping, per-epoch validation, tqdm progress with images/s."""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vitpeft.config import TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.methods.base import Prepared


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
    """Top-1 and top-5 accuracy in percent, and mean cross-entropy, over a whole split."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum = 0.0
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
) -> History:
    """Train ``method.model`` in place for ``cfg.epochs`` epochs; validate after each one.

    Each optimizer step sees ``cfg.batch_size`` images, in ``cfg.accumulation_steps`` micro-batches
    whose gradients add up to the full batch's. The method's hooks run at their points.
    """
    model = method.model
    device = train.images.device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    per_epoch = steps_per_epoch(len(train), cfg)
    scheduler = warmup_cosine(optimizer, round(cfg.warmup_epochs * per_epoch), cfg.epochs * per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    micro_size = math.ceil(cfg.batch_size / cfg.accumulation_steps)
    history = History()
    global_step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).to(device)
        loss_sum, seen, started = 0.0, 0, time.perf_counter()
        bar = tqdm(
            range(per_epoch),
            desc=f"{desc} epoch {epoch}/{cfg.epochs}",
            file=sys.stderr,
            mininterval=5.0,
            ascii=True,
        )
        for step in bar:
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            for micro in batch.split(micro_size):
                x = preprocess(train.images[micro], train=True, generator=generator)
                x, target = preprocess.mix(x, train.labels[micro])
                with autocast:
                    loss = F.cross_entropy(model(x).float(), target, label_smoothing=cfg.label_smoothing)
                    objective = loss if method.extra_loss is None else loss + method.extra_loss()
                if not torch.isfinite(objective):
                    raise FloatingPointError(
                        f"{desc}: loss is {objective.item()} at epoch {epoch}, step {step}"
                    )
                (objective * (len(micro) / len(batch))).backward()
                loss_sum += loss.item() * len(micro)
                seen += len(micro)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            global_step += 1
            if method.after_step is not None:
                method.after_step(global_step)  # before the next zero_grad: AdaLoRA reads the gradients
            rate = seen / (time.perf_counter() - started)
            # refresh=False: let mininterval throttle the bar, or logs get a line per step.
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{rate:.0f}", refresh=False)
        bar.close()
        metrics = evaluate(model, val, preprocess, cfg.eval_batch_size)
        history.epoch.append(epoch)
        history.train_loss.append(loss_sum / seen)
        history.val_top1.append(metrics["top1"])
        history.val_top5.append(metrics["top5"])
        history.val_loss.append(metrics["loss"])
        history.lr.append(optimizer.param_groups[0]["lr"])
        if method.epoch_record is not None:
            history.records.append(method.epoch_record())
        print(
            f"{desc} epoch {epoch}: train_loss {loss_sum / seen:.4f}  val_top1 {metrics['top1']:.2f}  "
            f"({seen / (time.perf_counter() - started):.0f} img/s)",
            file=sys.stderr,
            flush=True,
        )
    return history


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
