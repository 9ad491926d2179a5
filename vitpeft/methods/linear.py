"""Linear probe: the backbone is frozen and only the classification head is trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitpeft.methods.base import MethodConfig

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """Only ``model.get_classifier()`` is trained."""


def prepare(model: nn.Module, config: LinearConfig) -> nn.Module:
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    return model
