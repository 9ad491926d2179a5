"""Quantized frozen bases: bitsandbytes layers (QLoRA) and the group-wise INT-N quantizer (QA-LoRA).

This package's top level imports no torch, so that the config checks below run when the workflow loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

INT_BITS = (2, 3, 4, 8)  # code widths of the group-wise quantizer


def check_groups(widths: dict[str, int], group_size: int, where: str) -> None:
    """Raise ``ValueError`` naming the layer and values unless ``group_size`` divides every width."""
    for path, width in widths.items():
        if width % group_size:
            raise ValueError(
                f"{where}: group_size {group_size} does not divide in_features {width} of {path}"
            )


def replace_modules(
    module: nn.Module, make: Callable[[str, nn.Module], nn.Module | None], prefix: str = ""
) -> list[str]:
    """Replace every submodule for which ``make(path, submodule)`` returns a module, in place.

    A replaced submodule's own children are not visited. Returns the replaced paths.
    """
    replaced = []
    for name, child in list(module.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        new = make(path, child)
        if new is None:
            replaced += replace_modules(child, make, path)
        else:
            setattr(module, name, new)
            replaced.append(path)
    return replaced


def replace_block_linears(model: nn.Module, make: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Replace every plain ``nn.Linear`` inside the transformer blocks by ``make(path, linear)``.

    The blocks are found by their structure (:func:`vitpeft.architecture.find_blocks`), in timm and
    transformers ViTs alike. The head, norms, patch embedding and tokens stay as they are. Returns
    the replaced paths.
    """
    from torch import nn

    from vitpeft.architecture import find_blocks

    _, blocks = find_blocks(model)
    inside = tuple(f"{block}." for block in blocks)

    def block_linear(path: str, module: nn.Module) -> nn.Module | None:
        return make(path, module) if type(module) is nn.Linear and path.startswith(inside) else None

    replaced = replace_modules(model, block_linear)
    if not replaced:
        raise ValueError("no Linear layer inside the transformer blocks to quantize")
    return replaced
