"""The fields every method shares, and what a method hands the trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vitpeft.architecture import TIMM_VIT, BlockLayout

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class MethodConfig:
    """Hyperparameters common to every method; a method's config subclasses this.

    Attributes:
        name: the method's full name in the study grammar, e.g. ``lora_r8``.
        lr: peak learning rate of the warmup + cosine schedule.
        weight_decay: AdamW decay for matrices; norms, biases and embeddings get none.
        ema_decay: keep an exponential moving average of the weights with this decay per
            optimizer step (timm's ``ModelEmaV3``), validate it, and make it the run's final
            weights (tested, saved, exported); 0 keeps none.
    """

    name: str
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay on matrices"})
    ema_decay: float = field(default=0.0, metadata={"help": "weight EMA decay per step; 0: none"})

    # Whether the run starts from the study's pretrained backbone (False: random init).
    uses_pretrained_backbone: ClassVar[bool] = True

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"{self.name}: lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"{self.name}: weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"{self.name}: ema_decay must be in [0, 1), got {self.ema_decay!r}")

    def check_widths(
        self, in_features: dict[str, int], model: str = "model", layout: BlockLayout = TIMM_VIT
    ) -> None:
        """Raise ``ValueError`` if the method cannot apply to blocks with these input widths.

        Args:
            in_features: block-relative Linear path (``attn.qkv``) -> its ``in_features``.
            model: the model's name, for the message.
            layout: the model's blocks: which of their Linear layers plays which role.
        """


def head_parameter_count(model: nn.Module) -> int:
    """Parameters of the classification head, which every method trains."""
    return sum(p.numel() for p in model.get_classifier().parameters())


@dataclass
class MethodContext:
    """What a method may need to know about the run when it prepares the model.

    Attributes:
        total_steps: optimizer steps of the whole schedule (AdaLoRA's budget schedule needs it).
        device: where the model will train (a quantized base is quantized there, as it is built).
        probe_batch: a fixed, preprocessed batch for numerical checks such as quantization error.
    """

    total_steps: int
    device: torch.device
    probe_batch: torch.Tensor | None = None


@dataclass
class Prepared:
    """A method's model plus the hooks and numbers it adds to training.

    Attributes:
        model: the model to train.
        expected_trainable: the analytic trainable-parameter count, checked against the model.
        report: method-specific numbers for ``metrics.json`` (e.g. quantized weight bytes).
        extra_loss: a term added to the task loss (e.g. AdaLoRA's orthogonal regularizer).
        after_step: called after each optimizer step, before the gradients are cleared, with the
            global step and whether the step was skipped (an fp16 overflow: the gradients are inf
            or NaN), e.g. AdaLoRA's rank reallocation.
        epoch_record: called after each epoch; its dict is appended to the run's curves.
        state: what the method keeps outside the model's tensors and changes during training
            (e.g. AdaLoRA's importance scores), for the resume state; ``load_state`` puts it back.
    """

    model: nn.Module
    expected_trainable: int | None = None
    report: dict[str, Any] = field(default_factory=dict)
    extra_loss: Callable[[], torch.Tensor] | None = None
    after_step: Callable[[int, bool], None] | None = None
    epoch_record: Callable[[], dict[str, Any]] | None = None
    state: Callable[[], dict[str, Any]] | None = None
    load_state: Callable[[dict[str, Any]], None] | None = None
