"""LoRA (Hu et al., 2021, arXiv 2106.09685) on a timm ViT through peft.

Target layers are matched by full module path. timm's attention output projection and the patch
embedding's convolution are both called ``proj``, so a bare ``"proj"`` would also put an adapter
on ``patch_embed.proj``; we build an anchored regex over ``blocks.{i}.<path>`` instead, and check
that the adapters landed on exactly the layers we meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitpeft.methods.base import MethodConfig, MethodContext, Prepared, head_parameter_count

if TYPE_CHECKING:
    from torch import nn

# Paths inside a timm ViT block that LoRA may adapt.
ADAPTABLE = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """Low-rank update ``W + (alpha / r) * B @ A`` on the target Linear layers; the head is trained.

    Attributes:
        r: rank of the update, from the method name (``lora_r8`` -> 8).
        alpha: LoRA scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter's input.
        target_modules: paths inside each transformer block, from :data:`ADAPTABLE`.
    """

    r: int = field(default=8, metadata={"help": "rank of the low-rank update"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(
        default=("attn.qkv", "attn.proj"), metadata={"help": f"block-relative paths, from {ADAPTABLE}"}
    )

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"{self.name}: LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"{self.name}: alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.target_modules if t not in ADAPTABLE]
        if unknown or not self.target_modules:
            raise ValueError(
                f"{self.name}: target_modules {list(self.target_modules)} must be a non-empty subset of {list(ADAPTABLE)}"
            )


def target_regex(target_modules: tuple[str, ...]) -> str:
    """An anchored regex over full module paths; peft full-matches a string target against names."""
    alternatives = "|".join(re.escape(t) for t in target_modules)
    return rf"blocks\.\d+\.({alternatives})"


def target_layers(model: nn.Module, config: LoraConfig) -> dict[str, nn.Linear]:
    """The Linear layers of ``model`` that ``config`` adapts, by full path."""
    from torch import nn

    pattern = re.compile(target_regex(config.target_modules))
    return {
        name: module
        for name, module in model.named_modules()
        if pattern.fullmatch(name) and isinstance(module, nn.Linear)
    }


def expected_trainable_params(model: nn.Module, config: LoraConfig) -> int:
    """r * (in + out) per adapted layer, plus the head: the analytic count to check against."""
    adapters = sum(config.r * (m.in_features + m.out_features) for m in target_layers(model, config).values())
    return adapters + head_parameter_count(model)


def wrap(model: nn.Module, config: LoraConfig, peft_config, layer_type: type | None = None) -> nn.Module:
    """Apply a peft config and check that adapters sit on exactly the intended layers.

    Args:
        layer_type: the peft layer class every adapted layer must be (e.g. the bitsandbytes one).
    """
    import peft  # lazy: peft imports transformers, which is slow and not needed by other methods

    expected = set(target_layers(model, config))
    if not expected:
        raise ValueError(f"{config.name}: no Linear layer matches {list(config.target_modules)}")
    wrapped = peft.get_peft_model(model, peft_config)
    adapted = {
        name.removeprefix("base_model.model."): module
        for name, module in wrapped.named_modules()
        if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer)
    }
    if set(adapted) != expected:
        raise RuntimeError(f"{config.name}: adapters on {sorted(set(adapted) ^ expected)} unexpectedly")
    wrong = {
        n: type(m).__module__ + "." + type(m).__name__
        for n, m in adapted.items()
        if layer_type is not None and not isinstance(m, layer_type)
    }
    if wrong:
        raise RuntimeError(
            f"{config.name}: expected {layer_type.__module__}.{layer_type.__name__} layers, got {wrong}"
        )
    return wrapped


def peft_lora_config(config: LoraConfig):
    import peft

    return peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_regex(config.target_modules),
        modules_to_save=["head"],
    )


def prepare(model: nn.Module, config: LoraConfig, context: MethodContext) -> Prepared:
    expected = expected_trainable_params(model, config)
    return Prepared(wrap(model, config, peft_lora_config(config)), expected_trainable=expected)
