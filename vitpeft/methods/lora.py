"""LoRA (Hu et al., 2021, arXiv 2106.09685) on a timm or transformers ViT through peft.

Targets are roles (``attention_qkv``, ``attention_out``, ...) or explicit block-relative path
patterns, resolved by :mod:`vitpeft.architecture` to the full paths of Linear layers inside the
transformer blocks. peft gets exactly those paths: a bare suffix such as ``"proj"`` would also put
an adapter on timm's ``patch_embed.proj``. We check that the adapters landed on exactly the layers
we meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitpeft.architecture import ROLES, TIMM_VIT, BlockLayout, target_linears
from vitpeft.methods.base import MethodConfig, MethodContext, Prepared, head_parameter_count

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """Low-rank update ``W + (alpha / r) * B @ A`` on the target Linear layers; the head is trained.

    Attributes:
        r: rank of the update, from the method name (``lora_r8`` -> 8).
        alpha: LoRA scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter's input.
        target_modules: roles from :data:`vitpeft.architecture.ROLES`, or regexes full-matched
            against block-relative paths (``attn.qkv`` in timm) for power users.
    """

    r: int = field(default=8, metadata={"help": "rank of the low-rank update"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] = field(
        default=("attention_qkv", "attention_out"),
        metadata={"help": f"roles {ROLES}, or block-relative path patterns"},
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
        if not self.target_modules:
            raise ValueError(f"{self.name}: target_modules must name at least one role {list(ROLES)}")
        for target in self.target_modules:
            try:
                re.compile(target)
            except re.error as err:
                raise ValueError(
                    f"{self.name}: target_modules: {target!r} is no role and no regex ({err})"
                ) from err

    def check_widths(
        self, in_features: dict[str, int], model: str = "model", layout: BlockLayout = TIMM_VIT
    ) -> None:
        self.target_paths(layout, model)

    def target_paths(self, layout: BlockLayout, model: str = "model") -> tuple[str, ...]:
        """The block-relative paths the targets name on ``layout``'s blocks.

        Raises:
            ValueError: naming the method, the model and the target that does not resolve.
        """
        try:
            return layout.resolve(self.target_modules)
        except ValueError as err:
            raise ValueError(
                f"{self.name} on {model}: target_modules {list(self.target_modules)}: {err}"
            ) from err


def target_layers(model: nn.Module, config: LoraConfig) -> dict[str, nn.Linear]:
    """The Linear layers of ``model`` that ``config`` adapts, by full path."""
    return target_linears(model, config.target_modules)


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


def peft_lora_config(config: LoraConfig, model: nn.Module):
    import peft

    return peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=sorted(target_layers(model, config)),
        modules_to_save=["head"],
    )


def prepare(model: nn.Module, config: LoraConfig, context: MethodContext) -> Prepared:
    expected = expected_trainable_params(model, config)
    return Prepared(wrap(model, config, peft_lora_config(config, model)), expected_trainable=expected)
