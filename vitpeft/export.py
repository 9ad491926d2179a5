"""Merge a trained run into a deployable model, save it as safetensors and ONNX, and check both.

Every run leaves two deployable models:

- **float**: the adapters merged into an fp32 base. LoRA and AdaLoRA through peft's
  ``merge_and_unload``; QLoRA by dequantizing the bitsandbytes base first, then merging (peft would
  re-quantize the merged weights to NF4); QA-LoRA as its exact INT-N merge, dequantized.
- **int**: the INT-N model a deployment would ship, exported as INT-N ONNX. QA-LoRA's exact merge
  keeps its codes; every other method takes the naive route, its float merge quantized afterwards
  to the same bits and group size (``export.requantize_*``). Comparing the two is the study's
  quantization table.

First the rebuilt unmerged model must be the trained one: its test top-1 must equal the
``test_top1`` of the run's ``metrics.json``, exactly where the export runs as training did (same
device; on CPU the same CPU model and instruction set), within ``vitpeft.reproduce``'s tolerance
elsewhere (:func:`vitpeft.reproduce.tolerance`). Every INT-N accuracy change is measured against
this rebuilt model, on the export's device. The checks then compare logits on the held-out test
split between the unmerged model, the merged one and ONNX Runtime (and, for QA-LoRA, its INT-N
model in PyTorch and in ONNX Runtime), and count flipped predictions; a difference beyond tolerance
fails the export with the numbers in the message.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vitpeft.config import ExportConfig, spec_of_entry
from vitpeft.data import arrays
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.io import atomic_path, hardware, logging_to, read_json, remove_partial_writes, write_json
from vitpeft.methods import INT_EXPORT_FAMILIES, parse_method_name
from vitpeft.models import create_model
from vitpeft.quant import bnb, replace_block_linears, replace_modules
from vitpeft.quant.groupwise import GroupQuantLinear
from vitpeft.quant.onnx_int import (
    FloatOnnxExporter,
    export_int_onnx,
    integer_weight_types,
    session,
    trace_graph,
    trace_int_graph,
)
from vitpeft.reproduce import tolerance
from vitpeft.runs import load_trained
from vitpeft.train import Split, evaluate


class ExportMismatch(RuntimeError):
    """An exported model does not compute what the trained one computes."""


def merge(model: nn.Module, method: str) -> nn.Module:
    """A merged copy of a trained model: fp32 Linear layers, or INT-N layers for QA-LoRA."""
    from vitpeft.methods.qalora_layer import merge_qalora

    family, _ = parse_method_name(method)
    model = copy.deepcopy(model)
    if family == "qalora":
        merge_qalora(model)
        return model
    if family == "qlora":
        _dequantize_then_merge(model)
    if family in ("lora", "adalora", "qlora"):
        return model.merge_and_unload()
    return model  # full, linear, scratch: nothing to merge


def _dequantize_then_merge(peft_model: nn.Module) -> None:
    """Replace each bitsandbytes layer, adapted or not, by an fp32 Linear holding W (+ ΔW)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def float_layer(_: str, module: nn.Module) -> nn.Linear | None:
        if isinstance(module, BaseTunerLayer) and bnb.is_bnb_linear(module.get_base_layer()):
            linear = bnb.to_float_linear(module.get_base_layer())
            for adapter in module.active_adapters:
                linear.weight.data += module.get_delta_weight(adapter).float()
            return linear
        return bnb.to_float_linear(module) if bnb.is_bnb_linear(module) else None

    replace_modules(peft_model, float_layer)


def requantize(model: nn.Module, bits: int, group_size: int) -> nn.Module:
    """The naive route: a float model's block Linears quantized to INT-N after training."""
    model = copy.deepcopy(model)
    replace_block_linears(model, lambda _, linear: GroupQuantLinear.from_linear(linear, bits, group_size))
    return model


def dequantized(model: nn.Module) -> nn.Module:
    """An INT-N model with its GroupQuantLinear layers turned back into fp32 Linears."""
    model = copy.deepcopy(model)
    replace_modules(model, lambda _, m: m.to_linear() if isinstance(m, GroupQuantLinear) else None)
    return model


def logit_gap(reference: np.ndarray | torch.Tensor, other: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Largest absolute logit difference, and the same relative to the largest reference logit."""
    reference, other = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    largest = float(np.abs(reference - other).max())
    return {"max_abs": largest, "max_rel": largest / max(float(np.abs(reference).max()), 1e-12)}


def compare(reference: np.ndarray, other: np.ndarray, rtol: float) -> dict[str, Any]:
    """Logit gap within ``rtol``, plus the prediction flips it caused.

    A flip is decisive when the reference's top-1 margin exceeds ``2 * rtol`` times its largest
    logit: no perturbation within tolerance could cause it, so it always comes with a failing gap.
    Flips at near-ties are counted but pass; the counts say whether a failing gap changed answers.
    """
    gap = logit_gap(reference, other)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flips = reference.argmax(1) != other.argmax(1)
    decisive = flips & (margin > 2 * rtol * np.abs(reference).max())
    return {
        **gap,
        "rtol": rtol,
        "prediction_flips": int(flips.sum()),
        "decisive_flips": int(decisive.sum()),
        "passed": bool(gap["max_rel"] <= rtol and not decisive.any()),
    }


@torch.no_grad()
def _torch_logits(model: nn.Module, batches: list[torch.Tensor]) -> np.ndarray:
    model.eval()
    return np.concatenate([model(x).float().numpy() for x in batches])


def _onnx_logits(path: Path, batches: list[torch.Tensor]) -> np.ndarray:
    runner = session(path)
    return np.concatenate([runner.run(None, {"images": x.numpy()})[0] for x in batches])


def rebuilt_vs_trained(
    run_dir: Path, unmerged: nn.Module, test: Split, preprocess: BatchPreprocessor, batch_size: int
) -> dict[str, Any]:
    """The rebuilt unmerged model's test top-1 here against the ``test_top1`` training recorded.

    Measured by training's own :func:`vitpeft.train.evaluate`, so that on the same machine the
    same weights give the same number.

    Where the tolerance is not exact, the two may also differ by one test image: another
    device's kernels can flip a near-tie, and on a small test split one image is more than
    ``rtol`` (one of 64 images is 1.6 points).

    Raises:
        ExportMismatch: if the two differ beyond :func:`vitpeft.reproduce.tolerance` of the run's
            provenance and this machine; the message names both numbers and the run.
    """
    trained = read_json(run_dir / "metrics.json")["test_top1"]
    trained_on = read_json(run_dir / "provenance.json")
    here = {"device": str(test.images.device), "hardware": hardware()}
    allowed = tolerance(trained_on, here)
    one_image = 100.0 / len(test) if allowed.rtol > 0 else 0.0
    rebuilt = evaluate(unmerged, test, preprocess, batch_size)["top1"]
    if not math.isclose(rebuilt, trained, rel_tol=allowed.rtol, abs_tol=one_image * (1 + 1e-9)):
        also = f", or by one test image ({one_image:.3g} points)" if one_image else ""
        raise ExportMismatch(
            f"{run_dir}: the rebuilt unmerged model's test top-1 is {rebuilt!r}% on {here['device']}, "
            f"but training recorded {trained!r}% on {trained_on.get('device')} (metrics.json); "
            f"they must agree {allowed}{also}"
        )
    return {
        "rebuilt_top1": rebuilt,
        "trained_top1": trained,
        "rtol": allowed.rtol,
        "abs_tol": one_image,
        "tolerance": str(allowed),
        "trained_on": trained_on.get("device"),
        "rebuilt_on": here["device"],
    }


def export_run(
    run_dir: str | Path,
    data_dir: str | Path,
    backbone: str | Path | None,
    out_dir: str | Path,
    export: dict[str, Any] | None = None,
    onnx_exporter: FloatOnnxExporter | None = None,
    int_graphs: FloatOnnxExporter | None = None,
) -> dict[str, Any]:
    """Merge, save and check one finished run; write ``report.json`` last, into ``out_dir``.

    Writes ``model.safetensors`` + ``model.json`` (the float merge and how to rebuild it),
    ``model.onnx`` (float) and ``model_int.onnx`` (the INT-N model's integer codes: QA-LoRA's
    exact merge, or the naive route's). Every model is run on the whole test split, which training
    never saw: logit gaps, prediction flips and top-1 come from it.

    ``onnx_exporter`` writes the float ONNX file, ``int_graphs`` traces the INT-N file's float
    stand-in; pass the same two for a series of runs of one architecture
    (:class:`~vitpeft.quant.onnx_int.FloatOnnxExporter`), so that they share their graphs.

    Raises:
        ExportMismatch: if the rebuilt model's test top-1 is not the trained one
            (:func:`rebuilt_vs_trained`), or a comparison fails; the message has the numbers.
    """
    cfg = ExportConfig(**(export or {}))
    out_dir = Path(out_dir)
    remove_partial_writes(out_dir)
    restored = load_trained(run_dir, data_dir, backbone)
    run, unmerged, preprocess, test = (
        restored.run,
        restored.model,
        restored.preprocess,
        restored.splits["test"],
    )
    family, fields = parse_method_name(run.method.name)
    exact_int = family in INT_EXPORT_FAMILIES  # the trained model is INT-N: ship its codes as ONNX
    size = run.train.eval_batch_size
    tie = rebuilt_vs_trained(Path(run_dir), unmerged, test, preprocess, size)  # before any work on it
    batches = [preprocess(test.images[i : i + size], train=False) for i in range(0, len(test), size)]

    merged = merge(unmerged, run.method.name)
    if exact_int:
        int_model, float_model = merged, dequantized(merged)
        int_format = {"route": "exact merge", "bits": run.method.bits, "group_size": run.method.group_size}
    else:
        float_model = merged
        int_model = requantize(merged, cfg.requantize_bits, cfg.requantize_group_size)
        int_format = {
            "route": "float merge, then quantized",
            "bits": cfg.requantize_bits,
            "group_size": cfg.requantize_group_size,
        }
    save_merged(float_model, run, out_dir)
    (onnx_exporter or FloatOnnxExporter()).export(float_model, batches[0][:2], out_dir / "model.onnx")
    files = {
        "safetensors": out_dir / "model.safetensors",
        "onnx": out_dir / "model.onnx",
        "int_onnx": out_dir / "model_int.onnx",
    }
    int_format["layers"] = export_int_onnx(int_model, batches[0][:2], files["int_onnx"], int_graphs)
    int_format["onnx_weight_types"] = integer_weight_types(files["int_onnx"])

    if family == "qlora":
        classes = len(arrays.load_manifest(data_dir)["class_names"])
        files.update(save_quantized(unmerged, run, classes, out_dir))
    logits = {
        "unmerged": _torch_logits(unmerged, batches),
        "merged": _torch_logits(float_model, batches),
        "onnx": _onnx_logits(files["onnx"], batches),
        "int": _torch_logits(int_model, batches),
        "int_onnx": _onnx_logits(files["int_onnx"], batches),
    }
    merge_rtol = cfg.logit_rtol
    if family == "qlora" and fields["bits"] == 8:
        merge_rtol = cfg.int8_kernel_rtol
    elif exact_int:  # the merged zeros are rounded to fp16, as the trained base's were
        merge_rtol = cfg.fp16_zero_rtol
    checked = {
        "merged_vs_unmerged": compare(logits["unmerged"], logits["merged"], merge_rtol),
        "onnx_vs_merged": compare(logits["merged"], logits["onnx"], cfg.logit_rtol),
        "int_onnx_vs_int": compare(logits["int"], logits["int_onnx"], cfg.logit_rtol),
    }
    if exact_int:  # the INT-N model is the trained one
        checked["int_vs_unmerged"] = compare(logits["unmerged"], logits["int"], merge_rtol)
    if family == "qlora":  # its quantized base and adapter, reloaded from the files alone
        logits["quantized_reload"] = _torch_logits(load_quantized(out_dir), batches)
        checked["quantized_reload_vs_unmerged"] = compare(logits["unmerged"], logits["quantized_reload"], 0.0)
    labels = test.labels.cpu().numpy()
    report = {
        "method": run.method.name,
        "model": run.model.name,
        "dataset": run.dataset,
        "seed": run.seed,
        "test_images": len(labels),
        "rebuilt_vs_trained": tie,
        "int": int_format,
        "logits": checked,
        "int_vs_unmerged": logit_gap(logits["unmerged"], logits["int"]),  # what quantization costs
        "test_top1": {k: 100.0 * float((v.argmax(1) == labels).mean()) for k, v in logits.items()},
        "bytes": {name: path.stat().st_size for name, path in files.items()},
        "tolerances": asdict(cfg),
    }
    failed = [
        f"logits {name}: max rel {c['max_rel']:.3g} (max abs {c['max_abs']:.3g}, tolerance {c['rtol']:g}), "
        f"{c['decisive_flips']} decisive of {c['prediction_flips']} flipped test predictions"
        for name, c in checked.items()
        if not c["passed"]
    ]
    report["passed"] = not failed
    summary = ", ".join(f"{k} {v:.2f}%" for k, v in report["test_top1"].items())
    print(
        f"{run.method.name}/{run.model.name}/{run.dataset}/seed{run.seed}: test top-1 {summary}",
        file=sys.stderr,
    )
    if failed:
        raise ExportMismatch(f"{run_dir}: " + "; ".join(failed))
    write_json(out_dir / "report.json", report)
    return report


def export_runs(
    run_dirs: list[str | Path],
    data_dir: str | Path,
    backbone: str | Path | None,
    out_dirs: list[str | Path],
    logs: list[str | Path],
    export: dict[str, Any] | None = None,
    graph: str | Path | None = None,
    int_graph: str | Path | None = None,
) -> list[dict[str, Any]]:
    """:func:`export_run` for each run of a job (one model x dataset x method, every seed) in this
    process, each logging to its own file. Their float ONNX files are ``graph`` (the architecture's,
    from :func:`write_graph`) filled with each run's weights, and their INT-N files start from
    ``int_graph`` where their INT-N model has its layers and group size (else they trace once)."""
    if not len(run_dirs) == len(out_dirs) == len(logs):
        raise ValueError(f"{len(run_dirs)} runs, {len(out_dirs)} folders and {len(logs)} logs")
    reports, onnx_exporter, int_graphs = [], FloatOnnxExporter(graph), FloatOnnxExporter(int_graph)
    for run_dir, out_dir, log in zip(run_dirs, out_dirs, logs, strict=True):
        with logging_to(log):
            reports.append(
                export_run(run_dir, data_dir, backbone, out_dir, export, onnx_exporter, int_graphs)
            )
    print(
        f"{len(run_dirs)} runs exported; ONNX graphs traced: {onnx_exporter.traced} fp32, "
        f"{int_graphs.traced} INT-N stand-in",
        file=sys.stderr,
    )
    return reports


def write_graph(
    model: str,
    model_entry: dict[str, Any],
    data_dir: str | Path,
    path: str | Path,
    int_path: str | Path | None = None,
    export: dict[str, Any] | None = None,
) -> None:
    """Trace the float ONNX graph of ``model`` with the dataset's classes, once for all its runs;
    with ``int_path``, also the float stand-in of its INT-N model in the naive route's format
    (``export.requantize_bits``/``group_size``), which every run's INT-N file fills."""
    spec = spec_of_entry(model, model_entry)
    classes = len(arrays.load_manifest(data_dir)["class_names"])
    example = torch.zeros(2, 3, spec.img_size, spec.img_size)
    float_model = create_model(spec, classes)
    trace_graph(float_model, example, path)
    print(f"{model}: the ONNX graph with {classes} classes -> {path}", file=sys.stderr)
    if int_path is not None:
        cfg = ExportConfig(**(export or {}))
        int_model = requantize(float_model, cfg.requantize_bits, cfg.requantize_group_size)
        trace_int_graph(int_model, example, int_path)
        print(f"{model}: its INT-N stand-in's graph -> {int_path}", file=sys.stderr)


def save_merged(model: nn.Module, run, out_dir: Path) -> None:
    """The float merged weights plus what rebuilds the model: timm architecture and its arguments,
    or a transformers model's config (:meth:`vitpeft.models.hf.HFViT.description`)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    if run.model.is_hf:
        architecture = {"transformers": model.description()}
    else:
        architecture = {
            "timm_arch": run.model.arch,
            "create_kwargs": {
                "num_classes": model.num_classes,
                "img_size": run.model.img_size,
                "patch_size": run.model.patch_size,
                **run.model.create_kwargs,
            },
            "pretrained_cfg": {k: model.pretrained_cfg[k] for k in ("mean", "std")},
        }
    write_json(out_dir / "model.json", {**architecture, "method": run.method.name, "seed": run.seed})


def save_quantized(model: nn.Module, run, num_classes: int, out_dir: Path) -> dict[str, Path]:
    """QLoRA's deployable form, its base still quantized: ``base_quantized.safetensors`` holds the
    frozen model as bitsandbytes serializes it (4-bit: packed codes, absmax, quant map and quant
    state; 8-bit: int8 rows and their ``SCB`` scales; the rest fp32), ``adapter.safetensors`` the
    trained parameters beside it, and ``quantized.json`` the run config that rebuilds the model
    (:func:`load_quantized`)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
    files = {
        "base_quantized": out_dir / "base_quantized.safetensors",
        "adapter": out_dir / "adapter.safetensors",
    }
    parts = {
        "base_quantized": {k: v for k, v in tensors.items() if k not in trainable},
        "adapter": {k: v for k, v in tensors.items() if k in trainable},
    }
    for name, path in files.items():
        with atomic_path(path) as tmp:
            save_file(parts[name], str(tmp))
    write_json(out_dir / "quantized.json", {"run": run.to_dict(), "num_classes": num_classes})
    return files


def load_quantized(out_dir: str | Path) -> nn.Module:
    """Rebuild a QLoRA run from :func:`save_quantized`'s files alone: the method applied to a
    randomly initialised model of the run's architecture, then every weight loaded over it."""
    from vitpeft.config import RunConfig
    from vitpeft.methods import prepare_model
    from vitpeft.methods.base import MethodContext

    out_dir = Path(out_dir)
    meta = read_json(out_dir / "quantized.json")
    run = RunConfig.from_dict(meta["run"])
    model = create_model(run.model, meta["num_classes"])
    model = prepare_model(model, run.method, MethodContext(total_steps=1, device=torch.device("cpu"))).model
    state = {
        **load_file(str(out_dir / "base_quantized.safetensors")),
        **load_file(str(out_dir / "adapter.safetensors")),
    }
    try:
        bnb.load_quantized_state(model, state)
    except RuntimeError as err:
        raise RuntimeError(f"{out_dir}: {err}") from err
    return model.eval()


def load_merged(out_dir: str | Path) -> nn.Module:
    """Rebuild an exported float model from ``model.json`` and ``model.safetensors``."""
    out_dir = Path(out_dir)
    meta = read_json(out_dir / "model.json")
    if "transformers" in meta:
        from vitpeft.models import hf

        model = hf.rebuild(meta["transformers"])
    else:
        model = timm.create_model(meta["timm_arch"], pretrained=False, **meta["create_kwargs"])
    model.load_state_dict(load_file(str(out_dir / "model.safetensors")))
    return model.eval()
