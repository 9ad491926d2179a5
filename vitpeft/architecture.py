"""Where the transformer blocks of a ViT are, and which of their Linear layers plays which role.

Method configs name roles rather than module paths: ``attention_qkv`` (the query, key and value
projections: one fused Linear in timm, three in transformers), ``query`` / ``key`` / ``value``
(where they are separate Linears), ``attention_out``, ``mlp_in`` and ``mlp_out``. A
:class:`BlockLayout` says which block-relative paths play each role in one family of blocks; a
model's blocks are found by their structure (a module holding a layout's Linear layers at its
paths), so the same config adapts the same layers of timm's ``VisionTransformer`` and of
transformers' ``ViTForImageClassification`` / ``DeiTForImageClassification``. Any other target is
an explicit pattern: a regex full-matched against the block-relative paths (``attn.qkv``,
``mlp\\.fc\\d``), for power users.

The top level imports no torch: the config checks at workflow load use the layouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ROLES = ("attention_qkv", "query", "key", "value", "attention_out", "mlp_in", "mlp_out")


@dataclass(frozen=True)
class BlockLayout:
    """One family of transformer blocks: the block-relative paths of each role's Linear layers.

    Attributes:
        family: the family's name, for messages.
        roles: role -> block-relative paths, in forward order.
    """

    family: str
    roles: dict[str, tuple[str, ...]]

    @property
    def paths(self) -> tuple[str, ...]:
        """Every Linear path of a block, each once, in forward order."""
        return tuple(dict.fromkeys(p for paths in self.roles.values() for p in paths))

    def shapes(self, width: int, hidden: int) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each path, for a block of this width and MLP width."""
        qkv = self.roles["attention_qkv"]
        shapes = {p: (width, 3 * width // len(qkv)) for p in qkv}
        shapes |= {p: (width, width) for p in self.roles["attention_out"]}
        shapes |= {p: (width, hidden) for p in self.roles["mlp_in"]}
        return shapes | {p: (hidden, width) for p in self.roles["mlp_out"]}

    def resolve(self, targets: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The block-relative paths that ``targets`` (roles or explicit patterns) name, in forward order.

        Raises:
            ValueError: a role this family lacks, or a pattern that matches no path, named.
        """
        chosen = set()
        for target in targets:
            if target in ROLES:
                if target not in self.roles:
                    raise ValueError(
                        f"{self.family} blocks have no separate {target!r} Linear layer "
                        f"(their roles: {sorted(self.roles)})"
                    )
                chosen |= set(self.roles[target])
                continue
            matched = {p for p in self.paths if re.fullmatch(target, p)}
            if not matched:
                raise ValueError(
                    f"{target!r} is neither a role {list(ROLES)} nor a pattern that matches a Linear "
                    f"layer of {self.family} blocks {list(self.paths)}"
                )
            chosen |= matched
        return tuple(p for p in self.paths if p in chosen)


TIMM_VIT = BlockLayout(
    "timm ViT",
    {
        "attention_qkv": ("attn.qkv",),
        "attention_out": ("attn.proj",),
        "mlp_in": ("mlp.fc1",),
        "mlp_out": ("mlp.fc2",),
    },
)
_HF5_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
HF_VIT = BlockLayout(  # transformers >= 5 (ViTLayer, DeiTLayer)
    "transformers ViT/DeiT",
    {
        "attention_qkv": _HF5_QKV,
        "query": _HF5_QKV[:1],
        "key": _HF5_QKV[1:2],
        "value": _HF5_QKV[2:],
        "attention_out": ("attention.o_proj",),
        "mlp_in": ("mlp.fc1",),
        "mlp_out": ("mlp.fc2",),
    },
)
_HF4_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
HF4_VIT = BlockLayout(  # transformers 4 (the same classes, before their layers were renamed)
    "transformers 4 ViT/DeiT",
    {
        "attention_qkv": _HF4_QKV,
        "query": _HF4_QKV[:1],
        "key": _HF4_QKV[1:2],
        "value": _HF4_QKV[2:],
        "attention_out": ("attention.output.dense",),
        "mlp_in": ("intermediate.dense",),
        "mlp_out": ("output.dense",),
    },
)
LAYOUTS = (TIMM_VIT, HF_VIT, HF4_VIT)
HF_MODEL_TYPES = ("vit", "deit")  # transformers' model_type of the supported classification models


def hf_layout() -> BlockLayout:
    """The layout of the ViT/DeiT blocks that the installed transformers builds."""
    return HF_VIT if int(metadata.version("transformers").split(".")[0]) >= 5 else HF4_VIT


def architecture_name(model: nn.Module) -> str:
    """The model's class, and the class it wraps if it wraps one (for messages)."""
    inner = getattr(model, "architecture", None)
    return f"{type(model).__name__} ({inner})" if inner else type(model).__name__


def _has_linear(block: nn.Module, path: str) -> bool:
    """Whether ``block`` has a linear map at ``path``: an ``nn.Linear``, or what replaced one (a
    quantized layer, an adapter), which keeps its ``in_features`` and ``out_features``."""
    try:
        module = block.get_submodule(path)
    except AttributeError:
        return False
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def find_blocks(model: nn.Module) -> tuple[BlockLayout, list[str]]:
    """The layout of ``model``'s transformer blocks and each block's path, in order.

    A block is a module that holds a Linear layer at every path of one known layout.

    Raises:
        ValueError: no module of ``model`` is a block of a known layout; the architecture is named.
    """
    for layout in LAYOUTS:
        blocks = [
            name
            for name, module in model.named_modules()
            if name and all(_has_linear(module, p) for p in layout.paths)
        ]
        if blocks:
            return layout, blocks
    raise ValueError(
        f"unknown architecture {architecture_name(model)}: no transformer block of a known layout "
        f"({', '.join(layout.family for layout in LAYOUTS)}); name explicit paths of a known one"
    )


def block_linears(model: nn.Module, paths: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """Full path -> layer, for the Linear layers at ``paths`` (default: all) of every block."""
    layout, blocks = find_blocks(model)
    return {
        f"{block}.{path}": model.get_submodule(f"{block}.{path}")
        for block in blocks
        for path in (layout.paths if paths is None else paths)
    }


def target_linears(model: nn.Module, targets: tuple[str, ...] | list[str]) -> dict[str, nn.Module]:
    """Full path -> layer, for the Linear layers of every block that ``targets`` name."""
    layout, _ = find_blocks(model)
    return block_linears(model, layout.resolve(targets))
