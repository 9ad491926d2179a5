"""Linear probe: the backbone is frozen and only the classification head is trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitpeft.methods.base import MethodConfig, MethodContext, Prepared, head_parameter_count

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LinearConfig(MethodConfig):
    """Only ``model.get_classifier()`` is trained."""


def prepare(model: nn.Module, config: LinearConfig, context: MethodContext) -> Prepared:
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)
    return Prepared(model, expected_trainable=head_parameter_count(model))
