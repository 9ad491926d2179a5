"""ONNX export that keeps group-wise INT-N layers as integer codes.

torch's exporter has no notion of our codes, so we export a stand-in and rewrite it. Each
:class:`~vitpeft.quant.groupwise.GroupQuantLinear` becomes

    y = x @ (scale ⊙ codes)ᵀ + sum_g(x) @ zerosᵀ + bias

where ``sum_g`` sums each group of ``g`` input features. The first product's weight is exported as
a float initializer with a known name; afterwards that initializer is replaced by a blocked
``DequantizeLinear`` (opset 21) of UINT4 or UINT8 codes with one scale per group, so the file holds
the codes, not floats. The zeros stay float: after a QA-LoRA merge they are no longer integers,
and they are one value per group, not per weight. Scales and zeros are written as fp32 holding
their fp16 values exactly: with an fp16 scale, ``DequantizeLinear`` would round every
``scale × code`` to fp16 and hand the fp32 ``MatMul`` fp16 weights.

ONNX Runtime fuses ``DequantizeLinear`` + ``MatMul`` into ``MatMulNBits``, which by default
computes with int8-quantized activations (accuracy level 4). :func:`session` asks for fp32
accumulation (level 1) so that the check measures the export, not that extra approximation.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitpeft.io import atomic_path
from vitpeft.quant import replace_modules
from vitpeft.quant.groupwise import GroupQuantLinear, dequantize

OPSET = 21  # the first opset with blocked DequantizeLinear and 4-bit integer types


class _ExportIntLinear(nn.Module):
    """The exporter's stand-in for a GroupQuantLinear; ``weight_t`` is swapped for codes afterwards."""

    def __init__(self, layer: GroupQuantLinear):
        super().__init__()
        self.group_size, self.bits = layer.group_size, layer.bits
        # plain tensors, not buffers: the exporter must not see them; they replace weight_t afterwards
        self.codes, self.scales = layer.codes.detach(), layer.scales.detach()
        scaled = dequantize(layer.codes, layer.scales, torch.zeros_like(layer.zeros))  # scale * code
        self.weight_t = nn.Parameter(scaled.T.contiguous())  # (in, out), as MatMul consumes it
        self.zeros_t = nn.Parameter(layer.zeros.detach().float().T.contiguous())  # (in / g, out)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t + x.unflatten(-1, (-1, self.group_size)).sum(-1) @ self.zeros_t
        return y if self.bias is None else y + self.bias


def _stand_in(model: nn.Module) -> tuple[nn.Module, dict[str, _ExportIntLinear]]:
    model = copy.deepcopy(model).cpu().eval()
    layers: dict[str, _ExportIntLinear] = {}

    def stand_in(path: str, module: nn.Module) -> _ExportIntLinear | None:
        if isinstance(module, GroupQuantLinear):
            layers[path] = _ExportIntLinear(module)
            return layers[path]
        return None

    replace_modules(model, stand_in)
    if not layers:
        raise ValueError("the model has no GroupQuantLinear layer to export as integers")
    return model, layers


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Export ``model`` (float layers only) with a dynamic batch axis, atomically."""
    import onnx

    proto = _to_proto(copy.deepcopy(model).cpu().eval(), example)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


class FloatOnnxExporter:
    """:func:`export_onnx` for a series of float models of one architecture, such as a job's seeds.

    Tracing a ViT with torch's exporter takes seconds, the same each time; models that differ only
    in their weights share one graph. The first model is exported by torch; each initializer of its
    graph is then bound to the weight it holds: by name, or as the transpose torch folded into a
    ``MatMul`` (found by exact equality). A later model with the same weight names and shapes is
    written as that graph with its own weights in the bound initializers. Where a binding is not
    unique, or the weights do not fit, the model is traced afresh. The other initializers are
    constants of the architecture (shapes, scalars), the same for every model. The export's checks
    compare every file's ONNX Runtime logits with its PyTorch model, so a graph that did not fit
    would fail its job loudly.
    """

    def __init__(self):
        self._graph = None  # the first model's ModelProto
        self._bindings: dict[str, tuple[str, bool]] = {}  # initializer -> (weight, transposed)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.traced = 0  # how many models were traced by torch (the rest reused a graph)

    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
        import onnx
        from onnx import numpy_helper

        weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        if self._graph is None or {k: w.shape for k, w in weights.items()} != self._shapes:
            proto = _to_proto(copy.deepcopy(model).cpu().eval(), example)
            self.traced += 1
            self._bind(proto, weights)
        else:
            proto = copy.deepcopy(self._graph)
            for init in proto.graph.initializer:
                if init.name in self._bindings:
                    name, transposed = self._bindings[init.name]
                    value = weights[name].T if transposed else weights[name]
                    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), init.name))
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))

    def _bind(self, proto, weights: dict[str, np.ndarray]) -> None:
        from onnx import numpy_helper

        bindings = {}
        for init in proto.graph.initializer:
            value = numpy_helper.to_array(init)
            if init.name in weights and np.array_equal(value, weights[init.name]):
                bindings[init.name] = (init.name, False)
                continue
            matches = [
                (name, transposed)
                for name, weight in weights.items()
                for transposed in (False, True)
                if (weight.T if transposed else weight).shape == value.shape
                and np.array_equal(weight.T if transposed else weight, value)
            ]
            if value.size > 1 and len(matches) > 1:  # ambiguous: which weight would a later model put here?
                self._graph = None
                return
            if matches and value.size > 1:
                bindings[init.name] = matches[0]
        self._graph, self._bindings = proto, bindings
        self._shapes = {k: w.shape for k, w in weights.items()}


def export_int_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> int:
    """Export a model whose block Linears are GroupQuantLinear, with their codes as UINT4/UINT8.

    Returns the number of layers rewritten to ``DequantizeLinear`` of integer codes.
    """
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    stand_in, layers = _stand_in(model)
    proto = _to_proto(stand_in, example)
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = []
    for name, layer in layers.items():
        weight = f"{name}.weight_t"
        if weight not in initializers:
            raise RuntimeError(f"the exporter renamed or folded {weight}; cannot place the codes of {name}")
        graph.initializer.remove(initializers[weight])
        codes = layer.codes.T.contiguous().numpy()  # (in, out), as MatMul consumes it
        codes = codes.astype(ml_dtypes.uint4) if layer.bits <= 4 else codes  # packed: two per byte
        graph.initializer.append(numpy_helper.from_array(codes, f"{name}.codes"))
        scales = layer.scales.T.contiguous().numpy().astype(np.float32)  # (in / g, out)
        graph.initializer.append(numpy_helper.from_array(scales, f"{name}.scales"))
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}.codes", f"{name}.scales"],
                [weight],
                name=f"{name}.dequantize",
                axis=0,
                block_size=layer.group_size,
            )
        )
    for node in reversed(nodes):  # the codes are graph constants: dequantize first
        graph.node.insert(0, node)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return len(nodes)


def _to_proto(model: nn.Module, example: torch.Tensor):
    program = torch.onnx.export(
        model,
        (example.cpu(),),
        dynamo=True,
        opset_version=OPSET,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    return program.model_proto


def session(path: str | Path):
    """An ONNX Runtime CPU session that accumulates dequantized matmuls in fp32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def integer_weight_types(path: str | Path) -> dict[str, int]:
    """Count of initializers per integer element type in an ONNX file (e.g. ``{"UINT4": 24}``)."""
    import onnx
    from onnx import TensorProto

    counts: dict[str, int] = {}
    for init in onnx.load(str(path)).graph.initializer:
        name = TensorProto.DataType.Name(init.data_type)
        if name in ("UINT4", "INT4", "UINT8", "INT8"):
            counts[name] = counts.get(name, 0) + 1
    return counts
