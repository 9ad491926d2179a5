"""The fields every method shares, and the interface a method module provides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class MethodConfig:
    """Hyperparameters common to every method; a method's config subclasses this.

    Attributes:
        name: the method's full name in the study grammar, e.g. ``lora_r8``.
        lr: peak learning rate of the warmup + cosine schedule.
        weight_decay: AdamW decay for matrices; norms, biases and embeddings get none.
    """

    name: str
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay on matrices"})

    # Whether the run starts from the study's pretrained backbone (False: random init).
    uses_pretrained_backbone: ClassVar[bool] = True

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"{self.name}: lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"{self.name}: weight_decay must be >= 0, got {self.weight_decay!r}")
