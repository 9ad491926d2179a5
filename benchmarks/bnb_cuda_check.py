"""bitsandbytes' bases on a GPU against the same bases quantized on the CPU.

For each base (int8; NF4 and FP4, with and without double quantization) a ViT's block Linears are
quantized on the CPU and on CUDA from the same fp32 weights. Printed per base: the bytes stored
(they must be equal: the format does not depend on the device), the share of identical code
bytes, and each device's feature error against the fp32 model on the same images.

    python benchmarks/bnb_cuda_check.py                 # deit_small at 224 px
"""

from __future__ import annotations

import argparse
import copy

import torch

from vitpeft.architecture import block_linears
from vitpeft.config import ModelSpec
from vitpeft.models import create_model
from vitpeft.quant import bnb

BASES = [(8, "nf4", False), (4, "nf4", False), (4, "nf4", True), (4, "fp4", False)]


def quantized(model: torch.nn.Module, device: torch.device, bits: int, quant_type: str, double_quant: bool):
    copied = copy.deepcopy(model).to(device)
    bnb.quantize_linear_layers(copied, bits, device, quant_type, double_quant)
    return copied


def codes(model: torch.nn.Module) -> torch.Tensor:
    """Every quantized layer's code bytes, concatenated, on the CPU."""
    layers = block_linears(model).values()
    return torch.cat([layer.weight.detach().reshape(-1).view(torch.uint8).cpu() for layer in layers])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bnb_cuda_check: no CUDA device")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(ModelSpec(args.model, img_size=args.img_size), num_classes=100).eval()
    images = torch.randn(8, 3, args.img_size, args.img_size)
    reference = bnb.features(model, images)
    print(f"device {torch.cuda.get_device_name(0)}, {args.model} at {args.img_size} px", flush=True)
    for bits, quant_type, double_quant in BASES:
        on_cpu = quantized(model, cpu, bits, quant_type, double_quant)
        on_cuda = quantized(model, cuda, bits, quant_type, double_quant)
        cpu_bytes, cuda_bytes = bnb.base_linear_bytes(on_cpu), bnb.base_linear_bytes(on_cuda)
        same_codes = (codes(on_cpu) == codes(on_cuda)).float().mean().item()
        cpu_error = bnb.relative_error(reference, bnb.features(on_cpu, images))
        cuda_error = bnb.relative_error(reference, bnb.features(on_cuda, images.to(cuda)).cpu())
        layer = next(iter(block_linears(on_cuda).values()))
        name = f"int{bits}" if bits == 8 else f"{quant_type}{' dq' if double_quant else ''}"
        print(
            f"{name:7s} bytes cpu {cpu_bytes:,} cuda {cuda_bytes:,} ({'equal' if cpu_bytes == cuda_bytes else 'DIFFER'})  "
            f"identical codes {100 * same_codes:.2f}%  feature error cpu {cpu_error:.4f} cuda {cuda_error:.4f}  "
            f"layer {type(layer).__module__}.{type(layer).__name__}",
            flush=True,
        )


if __name__ == "__main__":
    main()
