"""QA-LoRA for ViTs (Xu et al., 2023, arXiv 2309.14717): quantization-aware LoRA whose merge keeps
the model INT-N.

Every Linear layer inside the transformer blocks becomes a frozen group-wise INT-N layer
(:mod:`vitpeft.quant.groupwise`); the target layers also get an adapter on the group-pooled input
(:mod:`vitpeft.methods.qalora_layer`). The forward pass trains against the quantized base, and after
training the adapters fold exactly into the group zeros. peft's ``use_qalora`` covers only GPTQ
layers and cannot merge, so this method is ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitpeft.architecture import TIMM_VIT, BlockLayout
from vitpeft.methods.base import MethodContext, Prepared, head_parameter_count
from vitpeft.methods.lora import LoraConfig, target_layers
from vitpeft.quant import INT_BITS, check_groups

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class QALoraConfig(LoraConfig):
    """LoRA on the group-pooled input over a group-wise INT-N base.

    Attributes:
        bits: code width of the base, from the name (``qalora4_r8`` -> 4): 2, 3, 4 or 8.
        group_size: consecutive input features sharing one scale and zero; must divide the width
            of every Linear in the blocks, and ``width / group_size`` must be at least ``r``.
    """

    bits: int = field(default=4, metadata={"help": "base code width: 2, 3, 4 or 8"})
    group_size: int = field(default=16, metadata={"help": "input features per quantization group"})

    def __post_init__(self):
        super().__post_init__()
        if self.bits not in INT_BITS:
            raise ValueError(f"{self.name}: bits must be one of {INT_BITS}, got {self.bits!r}")
        if not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ValueError(f"{self.name}: group_size must be a positive integer, got {self.group_size!r}")

    def check_widths(
        self, in_features: dict[str, int], model: str = "model", layout: BlockLayout = TIMM_VIT
    ) -> None:
        check_groups(in_features, self.group_size, f"{self.name} on {model}")
        targets = self.target_paths(layout, model)
        for path, width in in_features.items():
            if path in targets and self.r > width // self.group_size:
                raise ValueError(
                    f"{self.name} on {model}: rank {self.r} exceeds the pooled dimension "
                    f"{width // self.group_size} of {path} (in_features {width} / group_size {self.group_size})"
                )


def block_widths(model: nn.Module) -> dict[str, int]:
    """Block-relative path -> in_features of the Linear layers inside the transformer blocks."""
    from vitpeft.architecture import find_blocks

    layout, blocks = find_blocks(model)
    return {path: model.get_submodule(f"{blocks[0]}.{path}").in_features for path in layout.paths}


def expected_trainable_params(model: nn.Module, config: QALoraConfig) -> int:
    """r * (in / g + out) per adapted layer, plus the head."""
    layers = target_layers(model, config).values()
    adapters = sum(config.r * (m.in_features // config.group_size + m.out_features) for m in layers)
    return adapters + head_parameter_count(model)


def prepare(model: nn.Module, config: QALoraConfig, context: MethodContext) -> Prepared:
    from vitpeft.architecture import architecture_name, find_blocks
    from vitpeft.methods.qalora_layer import QALoraLinear
    from vitpeft.quant import bnb, replace_block_linears
    from vitpeft.quant.groupwise import GroupQuantLinear

    config.check_widths(block_widths(model), architecture_name(model), find_blocks(model)[0])
    expected = expected_trainable_params(model, config)
    targets = set(target_layers(model, config))
    model.to(context.device)
    reference = bnb.features(model, context.probe_batch) if context.probe_batch is not None else None
    bytes_fp32 = bnb.base_linear_bytes(model)
    errors = []

    def quantized(path: str, linear: nn.Linear) -> nn.Module:
        base = GroupQuantLinear.from_linear(linear, config.bits, config.group_size)
        errors.append(bnb.relative_error(linear.weight.detach().float(), base.dequantized_weight()))
        return QALoraLinear(base, config.r, config.alpha, config.dropout) if path in targets else base

    model.requires_grad_(False)
    swapped = replace_block_linears(model, quantized)
    for name, param in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            param.requires_grad_(True)
    model.get_classifier().requires_grad_(True)
    packed = sum(m.packed_bytes() for m in model.modules() if isinstance(m, GroupQuantLinear))
    report = {
        **bnb.storage_report(len(swapped), bytes_fp32, packed),
        "quant_weight_rel_error_mean": sum(errors) / len(errors),
        "quant_weight_rel_error_max": max(errors),
    }
    if reference is not None:
        report["quant_feature_rel_error"] = bnb.relative_error(
            reference, bnb.features(model, context.probe_batch)
        )
    return Prepared(model, expected_trainable=expected, report=report)
