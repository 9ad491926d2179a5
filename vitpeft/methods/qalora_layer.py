"""The QA-LoRA layer: LoRA on the group-pooled input over a frozen group-wise INT-N base.

Xu et al., 2023 (arXiv 2309.14717). With the base ``W ≈ scale ⊙ codes + zero`` quantized per
group of ``g`` input features (:class:`~vitpeft.quant.groupwise.GroupQuantLinear`), the adapter
sees the input averaged over each group: ``A: in/g -> r``, ``B: r -> out``. Its contribution to
output ``o`` is then ``Σ_l (s · B A)[o, l] · mean_{j ∈ group l} x_j``, which is exactly a change
of every zero by ``s · (B A)[o, l] / g``. So the merge rewrites the zeros and leaves the codes and
scales alone: the merged model is as quantized as the one that was trained. The new zeros are
stored in fp16 like the old ones, so the merge is exact up to that one rounding per zero.

peft's ``use_qalora`` exists only for GPTQ layers and has no merge, hence this module.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from vitpeft.quant import replace_modules
from vitpeft.quant.groupwise import GroupQuantLinear


class QALoraLinear(nn.Module):
    """``base(x) + scaling * B(A(dropout(pool_g(x))))`` with a frozen :class:`GroupQuantLinear` base."""

    def __init__(self, base: GroupQuantLinear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        pooled = base.in_features // base.group_size
        if r > pooled:
            raise ValueError(
                f"rank {r} exceeds the pooled input dimension {pooled} "
                f"(in_features {base.in_features} / group_size {base.group_size})"
            )
        self.base = base
        self.lora_A = nn.Linear(pooled, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as peft's LoRA: B = 0, so ΔW = 0
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.to(base.codes.device)

    @property
    def group_size(self) -> int:
        return self.base.group_size

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over each group of ``g`` consecutive features: (..., in) -> (..., in / g)."""
        return x.unflatten(-1, (-1, self.group_size)).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(self.pool(x)))) * self.scaling

    @torch.no_grad()
    def zero_update(self) -> torch.Tensor:
        """What the adapter adds to every zero (out, in / g): ``s · B A / g``."""
        return (self.lora_B.weight @ self.lora_A.weight) * (self.scaling / self.group_size)

    @torch.no_grad()
    def merged(self) -> GroupQuantLinear:
        """A new frozen INT-N layer that computes what this layer computes: same codes and scales."""
        merged = copy.deepcopy(self.base)
        # Summed in the adapter's precision, then rounded once to how the zeros are stored (fp16):
        # the merged model is what is stored.
        merged.zeros.add_(self.zero_update())
        return merged


def merge_qalora(model: nn.Module) -> list[str]:
    """Replace every :class:`QALoraLinear` in ``model`` by its exact INT-N merge, in place."""
    return replace_modules(model, lambda _, m: m.merged() if isinstance(m, QALoraLinear) else None)
