"""QLoRA-style LoRA over a frozen 8-bit or 4-bit base (Dettmers et al., 2023, arXiv 2305.14314).

The transformer blocks' Linear layers are replaced by bitsandbytes layers (``Linear8bitLt``, or
``Linear4bit`` with NF4 by default), then peft puts its bitsandbytes-aware LoRA layers on top.
The head and norms stay in full precision and the head is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitpeft.methods.base import MethodContext, Prepared
from vitpeft.methods.lora import LoraConfig, expected_trainable_params, peft_lora_config, wrap

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class QLoraConfig(LoraConfig):
    """LoRA over a quantized frozen base.

    Attributes:
        bits: 8 (``Linear8bitLt``) or 4 (``Linear4bit``), from the name (``qlora4_r8`` -> 4).
        quant_type: 4-bit data type, ``nf4`` (NormalFloat, QLoRA's) or ``fp4``.
        double_quant: also quantize the 4-bit block scales (QLoRA's double quantization).
        compute_dtype: dtype that 4-bit layers dequantize to for their matmul. Under autocast
            (bf16 or fp16 training on a GPU) the matmul then runs in autocast's dtype all the
            same; the fp32 default keeps evaluation, which runs outside autocast, in fp32.
    """

    bits: int = field(default=4, metadata={"help": "base precision: 8 or 4 bits"})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit type: nf4 or fp4"})
    double_quant: bool = field(default=False, metadata={"help": "quantize the 4-bit scales too"})
    compute_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})

    def __post_init__(self):
        super().__post_init__()
        if self.bits not in (4, 8):
            raise ValueError(f"{self.name}: the quantized base must have 8 or 4 bits, got {self.bits!r}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"{self.name}: quant_type must be 'nf4' or 'fp4', got {self.quant_type!r}")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"{self.name}: compute_dtype must be float32, bfloat16 or float16, got {self.compute_dtype!r}"
            )


def prepare(model: nn.Module, config: QLoraConfig, context: MethodContext) -> Prepared:
    import peft.tuners.lora.bnb as peft_bnb

    from vitpeft.quant import bnb

    expected = expected_trainable_params(model, config)
    model.to(context.device)
    reference = bnb.features(model, context.probe_batch) if context.probe_batch is not None else None
    bytes_fp32 = bnb.base_linear_bytes(model)
    quantized = bnb.quantize_linear_layers(
        model, config.bits, context.device, config.quant_type, config.double_quant, config.compute_dtype
    )
    report = bnb.storage_report(len(quantized), bytes_fp32, bnb.base_linear_bytes(model))
    if reference is not None:
        report["quant_feature_rel_error"] = bnb.relative_error(
            reference, bnb.features(model, context.probe_batch)
        )
    layer_type = peft_bnb.Linear8bitLt if config.bits == 8 else peft_bnb.Linear4bit
    wrapped = wrap(model, config, peft_lora_config(config, model), layer_type=layer_type)
    return Prepared(wrapped, expected_trainable=expected, report=report)
