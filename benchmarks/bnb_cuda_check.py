"""bitsandbytes' bases on a GPU against the same bases quantized on the CPU.

For each base (int8; NF4 and FP4, with and without double quantization) a ViT's block Linears
(their biases made non-zero, as a trained backbone's are) are quantized on the CPU and on the
device from the same fp32 weights. Printed per base:

- the bytes stored (they must be equal: the format does not depend on the device) and the share
  of identical code bytes;
- each device's feature error against the fp32 model on the same images;
- ``reload``: the device's quantized state saved and loaded into a CPU model as the export loads
  it (``bnb.load_quantized_state``), and its features' gap to the device model's;
- ``bias``: whether one bf16-autocast training step of the QLoRA method on the device left every
  frozen base bias bit-identical.

Then QA-LoRA's group-wise INT-N base, prepared on the device and on the CPU: its codes, scales and
zeros must be identical, since the export rebuilds it on the CPU and merges the device-trained
adapters into that rebuild. ``groupwise.quantize`` computes on the CPU for every device, so this
guards that routing (on CUDA its own arithmetic would move a few fp16 scales by a step).

    python benchmarks/bnb_cuda_check.py                 # deit_small at 224 px, on CUDA
    python benchmarks/bnb_cuda_check.py --model deit_tiny --img-size 16 --device cpu   # a rehearsal
"""

from __future__ import annotations

import argparse
import copy

import torch

from vitpeft.architecture import block_linears
from vitpeft.config import ModelSpec
from vitpeft.methods import method_config, prepare_model
from vitpeft.methods.base import MethodContext
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


def reload_gap(on_device: torch.nn.Module, reloaded: torch.nn.Module, images: torch.Tensor, device) -> float:
    """The device model's state loaded into ``reloaded``, a CPU model of the same bases that has
    not run yet (bitsandbytes loads int8 rows only then), as the export loads it: their features' gap."""
    bnb.load_quantized_state(reloaded, {k: v.detach().cpu() for k, v in on_device.state_dict().items()})
    return bnb.relative_error(
        bnb.features(on_device, images.to(device)).cpu(), bnb.features(reloaded, images)
    )


def biases_kept(
    model: torch.nn.Module, side: int, bits: int, quant_type: str, double_quant: bool, device
) -> bool:
    """One bf16-autocast training step of the QLoRA method on ``device``: are the base biases kept?"""
    name = f"qlora{bits}_r8"
    config = method_config(
        name, {"quant_type": quant_type, "double_quant": double_quant} if bits == 4 else None
    )
    prepared = prepare_model(copy.deepcopy(model).to(device), config, MethodContext(2, device)).model.train()
    before = {n: m.bias.detach().clone() for n, m in prepared.named_modules() if bnb.is_bnb_linear(m)}
    images = torch.randn(4, 3, side, side, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        prepared(images).float().logsumexp(1).mean().backward()
    after = {n: m.bias for n, m in prepared.named_modules() if bnb.is_bnb_linear(m)}
    return bool(before) and all(
        after[n].dtype == b.dtype and torch.equal(after[n], b) for n, b in before.items()
    )


def groupwise_differences(model: torch.nn.Module, bits: int, device: torch.device) -> tuple[int, int]:
    """QA-LoRA's base prepared on ``device`` and on the CPU from the same weights: how many of its
    codes, scales and zeros differ, and how many there are."""
    from vitpeft.quant.groupwise import GroupQuantLinear

    def base(on: torch.device) -> dict[str, torch.Tensor]:
        config = method_config(f"qalora{bits}_r8")
        prepared = prepare_model(copy.deepcopy(model).to(on), config, MethodContext(2, on)).model
        layers = {n: m for n, m in prepared.named_modules() if isinstance(m, GroupQuantLinear)}
        return {f"{n}.{k}": t.detach().cpu() for n, m in layers.items() for k, t in m.state_dict().items()}

    on_cpu, on_device = base(torch.device("cpu")), base(device)
    kept = [k for k in on_cpu if not k.endswith(".bias")]
    differ = sum(int((on_cpu[k] != on_device[k]).sum()) for k in kept)
    return differ, sum(on_cpu[k].numel() for k in kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="cuda", help="cuda; cpu rehearses the check against itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bnb_cuda_check: no CUDA device")
    device, cpu = torch.device(args.device), torch.device("cpu")
    torch.manual_seed(0)
    model = create_model(ModelSpec(args.model, img_size=args.img_size), num_classes=100).eval()
    with torch.no_grad():
        for layer in block_linears(model).values():
            layer.bias.normal_(0, 0.02)
    images = torch.randn(8, 3, args.img_size, args.img_size)
    reference = bnb.features(model, images)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"device {name}, {args.model} at {args.img_size} px", flush=True)
    failed = []
    for bits, quant_type, double_quant in BASES:
        on_cpu = quantized(model, cpu, bits, quant_type, double_quant)
        on_device = quantized(model, device, bits, quant_type, double_quant)
        cpu_bytes, device_bytes = bnb.base_linear_bytes(on_cpu), bnb.base_linear_bytes(on_device)
        same_codes = (codes(on_cpu) == codes(on_device)).float().mean().item()
        cpu_error = bnb.relative_error(reference, bnb.features(on_cpu, images))
        device_error = bnb.relative_error(reference, bnb.features(on_device, images.to(device)).cpu())
        gap = reload_gap(on_device, quantized(model, cpu, bits, quant_type, double_quant), images, device)
        kept = biases_kept(model, args.img_size, bits, quant_type, double_quant, device)
        layer = next(iter(block_linears(on_device).values()))
        base = f"int{bits}" if bits == 8 else f"{quant_type}{' dq' if double_quant else ''}"
        print(
            f"{base:7s} bytes cpu {cpu_bytes:,} {device.type} {device_bytes:,} "
            f"({'equal' if cpu_bytes == device_bytes else 'DIFFER'})  identical codes {100 * same_codes:.2f}%  "
            f"feature error cpu {cpu_error:.4f} {device.type} {device_error:.4f}  reload gap {gap:.2e}  "
            f"bias {'kept' if kept else 'CHANGED'}  layer {type(layer).__module__}.{type(layer).__name__}",
            flush=True,
        )
        if cpu_bytes != device_bytes or not kept:
            failed.append(base)
    for bits in (4, 2):
        differ, total = groupwise_differences(model, bits, device)
        print(
            f"qalora{bits} group-wise base: {differ:,} of {total:,} codes, scales and zeros differ "
            f"between cpu and {device.type}",
            flush=True,
        )
        if differ:
            failed.append(f"qalora{bits}")
    if failed:
        raise SystemExit(
            "bnb_cuda_check: stored bytes differ, a base bias changed or a group-wise base differs for "
            + ", ".join(failed)
        )


if __name__ == "__main__":
    main()
