"""Quantized frozen bases: bitsandbytes layers (QLoRA) and the group-wise INT-N quantizer (QA-LoRA)."""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

QUANTIZABLE = re.compile(r"blocks\.\d+\..+")  # every Linear inside a transformer block; not the head


def replace_block_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Replace every plain ``nn.Linear`` inside the transformer blocks by ``make(path, linear)``.

    The head, norms, patch embedding and tokens stay as they are. Returns the replaced paths.
    """
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and QUANTIZABLE.fullmatch(path):
                setattr(parent, child_name, make(path, child))
                replaced.append(path)
    if not replaced:
        raise ValueError("no Linear layer inside the transformer blocks to quantize")
    return replaced
