"""The training device: which one a job uses (the config's ``device``), and what runs there.

``auto`` picks CUDA, then Apple's MPS, then the CPU. Per device:

- precision (``train.precision``): ``auto`` autocasts to bf16 where the device has it (a CUDA GPU
  from Ampere on, MPS from macOS 14), else to fp16 with a gradient scaler on CUDA (a T4, a
  V100), else trains in fp32 (the CPU, older MPS). ``bf16``, ``fp16`` and ``fp32`` insist; fp16
  always trains with torch's ``GradScaler``.
- fused AdamW: where torch has the fused kernel (``torch.utils._foreach_utils``: CUDA, MPS and
  the CPU in torch 2.14), except on the CPU, which keeps the reference loop as before (its
  resumes are bit-exact).
- ``PYTORCH_ENABLE_MPS_FALLBACK=1`` runs the ops that MPS lacks on the CPU. torch reads it when it
  loads, so :func:`enable_mps_fallback` sets it before anything imports torch.
- bitsandbytes (QLoRA): its 0.50 release runs 4-bit and LLM.int8() on MPS through slower
  pure-torch fallbacks (its README's support table; bitsandbytes PR #1983); before that MPS
  needed a hub kernel on macOS 26, so an older bitsandbytes is refused when the workflow loads.
  QA-LoRA is pure torch and runs everywhere.

This module imports torch only inside functions: the workflow reads it while it loads, and a
job's script calls :func:`enable_mps_fallback` before torch is imported.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

DEVICES = ("auto", "cuda", "mps", "cpu")
NAMES = {"cuda": "a CUDA GPU", "mps": "Apple silicon's GPU (MPS)", "cpu": "the CPU"}  # in the paper
MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"
# Method families whose quantized layers bitsandbytes computes, and the least bitsandbytes
# release that runs them on each device (absent: any release we pin).
BNB_FAMILIES = ("qlora",)
BNB_MIN_VERSION = {"mps": (0, 50)}


def candidates(requested: str, system: str | None = None, machine: str | None = None) -> tuple[str, ...]:
    """The device types a job may end up on, as far as the workflow can tell when it loads.

    ``auto`` may pick MPS only on Apple silicon (macOS on arm64), and CUDA anywhere else.
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested != "auto":
        return (requested,)
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    return ("mps", "cpu") if (system, machine) == ("Darwin", "arm64") else ("cuda", "cpu")


def may_use_cuda(requested: str) -> bool:
    """Whether a job under ``device: requested`` may train on a GPU that a scheduler books."""
    return requested in ("auto", "cuda")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


def unsupported(family: str, device_type: str, bnb_version: str | None = None) -> str | None:
    """Why a method of ``family`` cannot train on ``device_type``, or None if it can.

    Args:
        bnb_version: the installed bitsandbytes version (looked up when None; not imported).
    """
    if family not in BNB_FAMILIES or device_type not in BNB_MIN_VERSION:
        return None
    least = BNB_MIN_VERSION[device_type]
    if bnb_version is None:
        try:
            bnb_version = metadata.version("bitsandbytes")
        except metadata.PackageNotFoundError:
            return f"bitsandbytes is not installed; {device_type} needs bitsandbytes >= {'.'.join(map(str, least))}"
    if _version(bnb_version) < least:
        return (
            f"bitsandbytes {bnb_version} cannot quantize on {device_type}; "
            f"it needs bitsandbytes >= {'.'.join(map(str, least))}"
        )
    return None


def enable_mps_fallback(requested: str) -> bool:
    """Set ``PYTORCH_ENABLE_MPS_FALLBACK=1`` if the job may train on MPS; whether it is set.

    Raises:
        RuntimeError: torch is already imported, so setting it now would do nothing.
    """
    if "mps" not in candidates(requested):
        return os.environ.get(MPS_FALLBACK) == "1"
    if os.environ.get(MPS_FALLBACK) != "1":
        if "torch" in sys.modules:
            raise RuntimeError(f"{MPS_FALLBACK} must be set before torch is imported")
        os.environ[MPS_FALLBACK] = "1"
    return True


def select(requested: str = "auto"):
    """The ``torch.device`` to train on: the requested one, or for ``auto`` the first of CUDA,
    MPS and the CPU that this machine has.

    Raises:
        RuntimeError: the requested device is not available here.
    """
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if requested == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if requested not in available:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if not available[requested]:
        raise RuntimeError(f"device: {requested!r} is not available on {platform.node()}")
    return torch.device(requested)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def training_precision(device, requested: str = "auto") -> str:
    """What ``train.precision`` (``requested``) trains in on ``device``: bf16, fp16 or fp32."""
    import torch

    if requested not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        # Emulated bf16 (a T4 or V100, below compute capability 8) runs, slowly: fp16 is native.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "mps" and torch.backends.mps.is_macos_or_newer(14, 0):
        return "bf16"  # MPS has bf16 from macOS 14 on
    return "fp32"


def autocast_dtype(device, requested: str = "auto"):
    """The dtype that training autocasts to on ``device``, or None for fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training_precision(device, requested))


def autocast(device, requested: str = "auto"):
    """The autocast context of a training step on ``device`` (disabled where it trains in fp32)."""
    import torch

    dtype = autocast_dtype(device, requested)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device, requested: str = "auto"):
    """torch's loss scaler, enabled where the training precision is fp16: its gradients would
    otherwise underflow. A step whose scaled gradients overflow is skipped, and the scale halved."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=training_precision(device, requested) == "fp16")


def fused_adamw(device) -> bool:
    """Whether AdamW uses torch's fused kernel on ``device``; never on the CPU (see the module)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type != "cpu" and device.type in _get_fused_kernels_supported_devices()


def exact_fp32(device):
    """A context in which fp32 work stays fp32 on ``device``. On CUDA, cuDNN's convolutions (the
    patch embedding) would use TF32, a 10-bit mantissa, from Ampere on; evaluation runs in fp32,
    and its test top-1 is checked against the export's rebuild on the CPU."""
    import contextlib

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    )


def host_to_device(tensor, device):
    """``tensor``, made on the CPU (random draws from a CPU generator), on ``device`` without the
    host waiting: a copy from pageable memory to a GPU waits for everything queued there first;
    one from pinned memory is queued like a kernel (torch keeps the pinned block until it ran)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def empty_cache(device) -> None:
    """Hand the allocator's cached blocks back (after an out-of-memory step)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def describe(device, requested_precision: str = "auto") -> str:
    """One line for a run's log: the device and how it trains there."""
    precision = training_precision(device, requested_precision)
    parts = [
        {"bf16": "autocast bf16", "fp16": "autocast fp16 with a gradient scaler", "fp32": "fp32"}[precision],
        "fused AdamW" if fused_adamw(device) else "AdamW reference loop",
    ]
    if device.type == "mps":
        state = "set" if os.environ.get(MPS_FALLBACK) == "1" else "not set"
        parts.append(f"{MPS_FALLBACK}=1 {state} (ops MPS lacks run on the CPU)")
    return f"device {device.type}: " + ", ".join(parts)
