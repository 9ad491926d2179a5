"""One-command check of every PEFT method on the training device, for machines with a GPU.

For each method it builds the model, applies the method on the device (bitsandbytes quantizes the
base there), checks the peft layer classes and the trainable count (``prepare_model`` does), runs
a few AdamW steps under the trainer's precision (bf16 autocast on CUDA), and prints images/s,
peak memory and model FLOP utilization (FLOPs from torch's FlopCounterMode).

    python benchmarks/device_check.py                      # deit_small at 224 px, 20 steps per method
    python benchmarks/device_check.py --compile            # the same through torch.compile
    python benchmarks/device_check.py --img-size 32 --patch-size 4 --steps 2   # a quick CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vitpeft.config import ModelSpec
from vitpeft.methods import method_config, prepare_model
from vitpeft.methods.base import MethodContext
from vitpeft.models import count_parameters, create_model

METHODS = ["full", "linear", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]


def check(method: str, args, device: torch.device) -> None:
    torch.manual_seed(0)
    model = create_model(ModelSpec(args.model, img_size=args.img_size, patch_size=args.patch_size), 100).to(
        device
    )
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 100, (args.batch_size,), device=device)
    context = MethodContext(total_steps=args.steps + 10, device=device, probe_batch=x[:8])
    prepared = prepare_model(model, method_config(method), context)
    model = prepared.model.to(device).train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda"
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    runner = model

    def step(number: int) -> torch.Tensor:
        with autocast:
            loss = F.cross_entropy(runner(x).float(), y)
            if prepared.extra_loss is not None:
                loss = loss + prepared.extra_loss()
        loss.backward()
        optimizer.step()
        if prepared.after_step is not None:
            prepared.after_step(number)
        optimizer.zero_grad(set_to_none=True)
        return loss

    with FlopCounterMode(display=False) as counter:
        step(1)
    flops_per_step = counter.get_total_flops()  # counted eagerly: FlopCounterMode sees no compiled graph
    if args.compile:
        runner = torch.compile(model)
        step(1)  # compile outside the timed steps
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for number in range(2, args.steps + 2):
        loss = step(number)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{method}: loss {loss.item()}")
    mfu = flops_per_step * args.steps / elapsed / (args.peak_tflops * 1e12)
    memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    layer = {
        type(m).__module__ + "." + type(m).__name__
        for n, m in model.named_modules()
        if n.endswith("attn.qkv")
    }
    print(
        f"{method:11s} {args.batch_size * args.steps / elapsed:9.1f} img/s  MFU {100 * mfu:5.1f}%  "
        f"peak {memory:8.0f} MiB  trainable {count_parameters(model)['trainable']:>10,}  qkv {sorted(layer)[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="time the steps through torch.compile")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H100 SXM: 989)"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, {args.model} at "
        f"{args.img_size} px, batch {args.batch_size}, {args.steps} timed steps"
    )
    for method in args.methods.split(","):
        check(method, args, device)


if __name__ == "__main__":
    main()
