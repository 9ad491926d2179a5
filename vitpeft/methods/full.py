"""Full fine-tuning, and the same from random initialization (the transfer baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vitpeft.methods.base import MethodConfig, MethodContext, Prepared

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Every weight of the pretrained backbone and the new head is trained."""


@dataclass(frozen=True)
class ScratchConfig(FullConfig):
    """Full training from random initialization under the same budget, to measure transfer."""

    uses_pretrained_backbone: ClassVar[bool] = False


def prepare(model: nn.Module, config: FullConfig, context: MethodContext) -> Prepared:
    model.requires_grad_(True)
    return Prepared(model, expected_trainable=sum(p.numel() for p in model.parameters()))
