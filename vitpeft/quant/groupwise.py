"""Group-wise asymmetric min-max INT-N quantization of Linear weights, the base of QA-LoRA.

Each output row is cut into groups of ``g`` consecutive input features; a group has one scale and
one zero, and its weights become integer codes: ``w ≈ scale * code + zero`` with
``code ∈ [0, 2**bits - 1]``. Scales and zeros are stored in fp16, as the QA-LoRA paper stores
them, so a layer holds ``bits + 32 / g`` bits per weight (6 for INT4 at g = 16), not ``bits + 64 / g``. The zero is QA-LoRA's additive form (Xu et al., 2023, arXiv
2309.14717, β in W̃ = α·Ŵ + β), not an integer offset, so that an adapter acting on the
group-pooled input can be folded into it exactly (see :mod:`vitpeft.methods.qalora_layer`).

Why our own: bitsandbytes quantizes blocks of the flattened weight with one absmax and no zero,
and GPTQ-style packages need calibration and CUDA kernels. Neither exposes per-(row, group)
zeros that a merge may rewrite, which is the whole point of QA-LoRA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitpeft.quant import INT_BITS, check_groups


def check_quantization(in_features: int, bits: int, group_size: int, where: str = "layer") -> None:
    """Raise ``ValueError`` naming the values unless ``bits`` is supported and ``g`` divides the width."""
    if bits not in INT_BITS:
        raise ValueError(f"{where}: bits must be one of {INT_BITS}, got {bits!r}")
    if not (isinstance(group_size, int) and group_size > 0):
        raise ValueError(f"{where}: group_size must be a positive integer, got {group_size!r}")
    check_groups({"the layer": in_features}, group_size, where)


STATS_DTYPE = torch.float16  # scales and zeros, one of each per group


def _half_toward(values: torch.Tensor, bound: float) -> torch.Tensor:
    """``values`` in fp16, rounded toward ``bound`` (``-inf`` or ``inf``) instead of to nearest."""
    half = values.to(STATS_DTYPE)
    overshoots = half.float() > values if bound < 0 else half.float() < values
    return torch.where(overshoots, torch.nextafter(half, torch.full_like(half, bound)), half)


@torch.no_grad()
def quantize(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, ...]:
    """Min-max quantize ``weight`` (out, in) per group of ``group_size`` input features.

    The fp16 zero is the group's minimum rounded down and the fp16 scale is rounded up, so the
    stored grid still spans the group and every weight lies within half a step of its code's value.

    Computed on the CPU whatever ``weight``'s device, so that every device quantizes alike: CUDA
    divides by a Python number as a multiplication by its fp32 reciprocal, which may lose a bit
    and move an fp16 scale by a step, and a GPU run's base would then differ from the CPU rebuild
    that its export merges into.

    Returns:
        codes (out, in) uint8, scales (out, in // g) and zeros (out, in // g), float16, on the CPU.
    """
    out_features, in_features = weight.shape
    check_quantization(in_features, bits, group_size)
    groups = weight.detach().float().cpu().reshape(out_features, in_features // group_size, group_size)
    largest = groups.abs().max().item()
    if largest > torch.finfo(STATS_DTYPE).max / 2:
        raise ValueError(f"weights up to {largest:g} do not fit the fp16 zeros and scales")
    levels = 2**bits - 1
    zeros = _half_toward(groups.amin(-1), -torch.inf)
    scales = _half_toward((groups.amax(-1) - zeros.float()) / levels, torch.inf)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # a constant group: every code 0
    codes = torch.round((groups - zeros.float()[..., None]) / scales.float()[..., None]).clamp_(0, levels)
    return codes.to(torch.uint8).reshape(out_features, in_features), scales, zeros


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """``scale * code + zero`` per group: the float weight (out, in) that the codes stand for.

    Computed in fp32 (or the statistics' dtype if wider), whatever precision they are stored in.
    """
    out_features, in_features = codes.shape
    dtype = torch.promote_types(scales.dtype, torch.float32)
    groups = codes.reshape(out_features, scales.shape[1], -1).to(dtype)
    weight = groups * scales.to(dtype)[..., None] + zeros.to(dtype)[..., None]
    return weight.reshape(out_features, in_features)


class GroupQuantLinear(nn.Module):
    """A frozen Linear layer stored as INT-N codes plus per-group scales and zeros.

    The codes are a frozen ``uint8`` parameter (one code per weight, so parameter counts stay
    logical); ``packed_bytes`` counts them at ``bits`` each, as a deployment would store them.
    The float weight exists only inside a forward or backward pass (:class:`DequantizedLinear`),
    so training holds no float copy of it.
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool = True):
        super().__init__()
        check_quantization(in_features, bits, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        groups = in_features // group_size
        self.codes = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.uint8), requires_grad=False
        )
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=STATS_DTYPE))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=STATS_DTYPE))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int) -> GroupQuantLinear:
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias is not None)
        codes, scales, zeros = quantize(linear.weight, bits, group_size)
        layer.codes.data.copy_(codes)
        layer.scales.copy_(scales)
        layer.zeros.copy_(zeros)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.codes, self.scales, self.zeros)

    def to_linear(self) -> nn.Linear:
        """The float Linear layer with the dequantized weight (for fp32 export and comparisons)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight.data.copy_(self.dequantized_weight())
        if self.bias is not None:
            linear.bias.data.copy_(self.bias)
        return linear.to(self.codes.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DequantizedLinear.apply(x, self.codes, self.scales, self.zeros, self.bias)

    def packed_bytes(self) -> int:
        """Bytes of the weight at ``bits`` per code, plus the scales and zeros as they are held."""
        code_bytes = -(-self.codes.numel() * self.bits // 8)
        stats = (self.scales, self.zeros)
        return code_bytes + sum(t.numel() * t.element_size() for t in stats)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, bias={self.bias is not None}"
        )


def dequantize_to(
    dtype: torch.dtype, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> torch.Tensor:
    """The dequantized weight in ``dtype``, computed at the precision of ``dtype`` or of the scales,
    whichever is higher (fp16 scales with fp32 inputs: fp32; fp32 scales under bf16: fp32, then
    rounded once)."""
    precise = torch.promote_types(dtype, scales.dtype)
    return dequantize(codes, scales.to(precise), zeros.to(precise)).to(dtype)


class DequantizedLinear(torch.autograd.Function):
    """``x W^T + b`` with ``W = dequantize(codes, scales, zeros)`` made on the fly, and made again
    for backward instead of being kept.

    A plain ``F.linear(x, dequantize(...))`` leaves autograd holding each layer's float copy of
    ``W`` (out, in) until backward, so a quantized base would train in the memory of a float one.
    Here backward keeps only references to the stored codes, scales and zeros, and recomputes
    ``W`` to get ``grad_x = grad_y W``. The frozen codes, scales and zeros get no gradient, so
    ``x`` is not kept either (it would only serve a gradient of ``W``). Dtypes follow ``x`` and autocast as ``F.linear``
    would: the product is in the dtype autocast picks, and ``grad_x`` comes back in ``x``'s.
    """

    @staticmethod
    def forward(ctx, x, codes, scales, zeros, bias):
        y = F.linear(x, dequantize_to(x.dtype, codes, scales, zeros), bias)  # W is freed on return
        ctx.save_for_backward(codes, scales, zeros)
        ctx.x_dtype, ctx.product_dtype = x.dtype, y.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        codes, scales, zeros = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_to(ctx.product_dtype, codes, scales, zeros)
            grad_x = (grad_y.to(ctx.product_dtype) @ weight).to(ctx.x_dtype)
        if ctx.needs_input_grad[4]:  # a bias made trainable; frozen in every method here
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_x, None, None, None, grad_bias
