"""Replace a ViT's (timm or transformers) frozen Linear layers by bitsandbytes 8-bit or 4-bit layers.

timm models are not transformers models, and our transformers ViTs are wrapped, so
``BitsAndBytesConfig`` does not apply: we swap the modules ourselves. bitsandbytes would quantize a layer's weights lazily, when they move to a
device, but ``Int8Params`` only does so on a move *from the CPU*: a model already on the GPU would
keep fp32 weights until its first forward pass. So each layer is quantized explicitly, on the
training device, as it is swapped in. peft only picks its bitsandbytes-aware LoRA layers
when the model carries ``is_loaded_in_8bit`` / ``is_loaded_in_4bit``; without that flag it would
wrap the packed weights in plain LoRA and merging would corrupt them, so we set it.

bitsandbytes is imported inside the functions, so CPU-only code that never quantizes still imports.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from vitpeft.architecture import block_linears
from vitpeft.quant import replace_block_linears

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _OncePerMessage(logging.Filter):
    """Let each distinct message template through once.

    bitsandbytes' 8-bit matmul warns that it casts fp32 inputs to fp16 on every call: once per
    layer and forward pass, thousands of lines in a job's log around the progress bar.
    """

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        first = record.msg not in self.seen
        self.seen.add(record.msg)
        return first


def _warn_once_per_message(logger_name: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _OncePerMessage) for f in logger.filters):
        logger.addFilter(_OncePerMessage())


def _quantized_linear(
    linear: nn.Linear, bits: int, quant_type: str, double_quant: bool, compute_dtype, device: torch.device
):
    """A frozen bitsandbytes layer holding ``linear``'s weight already quantized on ``device``."""
    import bitsandbytes as bnb

    weight = linear.weight.detach().to(device)
    if bits == 8:
        # threshold=0 turns off LLM.int8()'s outlier decomposition: every input column is
        # quantized to int8 with W, none kept in fp16. (bitsandbytes trains on the CPU by
        # dequantizing W instead; it evaluates, and on CUDA also trains, in int8.)
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            has_fp16_weights=False,
            threshold=0.0,
        )
        # What Int8Params does on a move from the CPU: int8 rows and one absmax scale per row.
        codes, row_scales, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16).contiguous())
        layer.weight = bnb.nn.Int8Params(
            codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=row_scales
        )
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            quant_type=quant_type,
            compress_statistics=double_quant,
        )
        packed, state = bnb.functional.quantize_4bit(
            weight.contiguous(), compress_statistics=double_quant, quant_type=quant_type
        )
        layer.weight = bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=state.blocksize,
            compress_statistics=double_quant,
            quant_type=quant_type,
            bnb_quantized=True,
        )
        # On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights in place at the first
        # eval-mode forward and never packs them back; training after an evaluation then fails
        # inside autograd. We train and evaluate in turns, so keep the trainable layout.
        layer.support_avx512bf16_for_cpu = False
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.detach().to(device).clone(), requires_grad=False)
        if bits == 8:
            layer.register_forward_pre_hook(_input_in_bias_dtype)
    return layer


def _input_in_bias_dtype(layer: nn.Module, args: tuple) -> tuple:
    """Linear8bitLt recasts its bias, in place, to its input's dtype: under bf16 autocast the
    frozen base's fp32 biases would be rounded to bf16 for good (the trained model then differs
    from its rebuild). Given an input in its bias's dtype, the layer leaves the bias be; the matmul
    inside runs at the precision it did (int8, or autocast's)."""
    (x, *rest) = args
    return (x.to(layer.bias.dtype), *rest)


def quantize_linear_layers(
    model: nn.Module,
    bits: Literal[4, 8],
    device: torch.device,
    quant_type: Literal["nf4", "fp4"] = "nf4",
    double_quant: bool = False,
    compute_dtype: str = "float32",
) -> list[str]:
    """Swap every Linear inside the transformer blocks for a frozen bitsandbytes layer, in place.

    The new layers sit on ``device``, already quantized: their storage can be measured, and a
    forward pass runs, without any further move. The head, norms, patch embedding and tokens stay
    in full precision. Returns the swapped paths.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    dtype = COMPUTE_DTYPES[compute_dtype]
    _warn_once_per_message("bitsandbytes.autograd._functions")
    swapped = replace_block_linears(
        model, lambda _, linear: _quantized_linear(linear, bits, quant_type, double_quant, dtype, device)
    )
    setattr(model, f"is_loaded_in_{bits}bit", True)
    return swapped


def _tensor_bytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes that hold a layer's weight as stored: fp32 values, or int8 / packed 4-bit codes plus
    everything needed to decode them (row scales; block absmax, code book and nested state)."""
    weight = module.weight
    total = _tensor_bytes(weight)
    # 8-bit: one scale per output row. The first forward pass moves it from the weight to the
    # layer's matmul state, so look there too: the count must not depend on when that ran.
    row_scales = getattr(weight, "SCB", None)
    if row_scales is None:
        row_scales = getattr(getattr(module, "state", None), "SCB", None)
    total += _tensor_bytes(row_scales)
    state = getattr(weight, "quant_state", None)  # 4-bit: block absmax, code book, nested state
    while state is not None:
        total += _tensor_bytes(state.absmax) + _tensor_bytes(getattr(state, "code", None))
        total += _tensor_bytes(getattr(state, "offset", None))
        state = getattr(state, "state2", None)
    return total


def base_linear_bytes(model: nn.Module) -> int:
    """Weight bytes of the Linear layers inside the transformer blocks (what quantization shrinks)."""
    return sum(weight_bytes(module) for module in block_linears(model).values())


def storage_report(layers: int, bytes_fp32: int, bytes_quantized: int) -> dict[str, int | float]:
    """What a quantized base stores, for ``metrics.json``.

    ``base_bits_per_weight`` is 8 × the bytes stored (codes and every statistic) ÷ the number of
    weights; that number is ``bytes_fp32 / 4``, the same layers' weights counted in fp32.
    """
    return {
        "quantized_layers": layers,
        "base_linear_bytes_fp32": bytes_fp32,
        "base_linear_bytes_quantized": bytes_quantized,
        "base_bits_per_weight": 8 * bytes_quantized / (bytes_fp32 / 4),
    }


@torch.no_grad()
def features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Pre-logit features: what the frozen backbone hands the head."""
    model.eval()
    return model.forward_head(model.forward_features(batch), pre_logits=True).float()


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """‖other − reference‖ / ‖reference‖ (features here; QA-LoRA's weights too)."""
    return ((other - reference).norm() / reference.norm()).item()


def is_bnb_linear(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes") and hasattr(module, "weight")


def to_float_linear(layer: nn.Module) -> nn.Linear:
    """The fp32 ``nn.Linear`` that a bitsandbytes 8-bit or 4-bit layer computes with."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = dequantize_bnb_weight(layer.weight, state=getattr(layer, "state", None)).float()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    linear.weight.data.copy_(weight)
    if layer.bias is not None:
        linear.bias.data.copy_(layer.bias.detach().float())
    return linear.to(weight.device)


def load_quantized_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict that bitsandbytes wrote (``model.state_dict()`` of a model with 4-bit or
    8-bit layers) into a model of the same structure, whose layers are bitsandbytes layers already.

    A 4-bit layer's weight is its packed codes plus the quant state's entries under
    ``<layer>.weight.``; it is rebuilt as bitsandbytes rebuilds a prequantized weight. An 8-bit
    layer loads its int8 rows and ``SCB`` through bitsandbytes' own hook. Every key must land.

    Raises:
        RuntimeError: naming keys the model lacks or the state leaves out.
    """
    import bitsandbytes as bnb

    rest = dict(state)
    loaded = set()
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        prefix = f"{name}.weight."
        stats = {key[len(prefix) :]: rest.pop(key) for key in [k for k in rest if k.startswith(prefix)]}
        device = module.weight.device
        module.weight = bnb.nn.Params4bit.from_prequantized(
            rest.pop(f"{name}.weight"), stats, requires_grad=False, device=device, module=module
        )
        loaded.add(f"{name}.weight")
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = sorted(set(missing) - loaded)
    if missing or unexpected:
        raise RuntimeError(f"quantized state: missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}")
