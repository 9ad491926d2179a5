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
import json
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


BINDINGS_KEY = "vitpeft.weight_bindings"  # metadata of a saved graph: initializer -> [weight, transposed]


class FloatOnnxExporter:
    """:func:`export_onnx` for a series of float models of one architecture, such as a study's runs.

    Tracing a ViT with torch's exporter takes seconds, the same each time; models that differ only
    in their weights share one graph. A graph is traced once, from the first model or ahead of the
    jobs (:func:`trace_graph`, the rule onnx_graph); each of its initializers is bound to the weight
    it holds: by name, or as the transpose torch folded into a ``MatMul`` (found by exact equality).
    A model with the graph's weight names and shapes is written as that graph with its own weights
    in the bound initializers. The other initializers are constants of the architecture (shapes,
    scalars), the same for every model. A model that does not fit is traced afresh. The export's
    checks compare every file's ONNX Runtime logits with its PyTorch model, so a graph that did not
    fit would fail its job loudly, never pass silently.

    Args:
        graph: a graph saved by :func:`trace_graph` to start from (None: trace the first model).
    """

    def __init__(self, graph: str | Path | None = None):
        self._graph = None  # ModelProto
        self._bindings: dict[str, tuple[str, bool]] = {}  # initializer -> (weight, transposed)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.traced = 0  # how many models were traced by torch (the rest reused a graph)
        if graph is not None:
            self._load(graph)

    def export(self, model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
        import onnx

        proto = self.proto(model, example)
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))

    def proto(self, model: nn.Module, example: torch.Tensor):
        """``model``'s ONNX ModelProto: the shared graph with its weights, or a fresh trace."""
        weights = _weights(model)
        if self._graph is None or {k: w.shape for k, w in weights.items()} != self._shapes:
            proto = _to_proto(copy.deepcopy(model).cpu().eval(), example)
            self.traced += 1
            self._bind(proto, weights)
            return copy.deepcopy(proto)  # the caller may rewrite its copy (export_int_onnx does)
        return self._filled(weights)

    def _filled(self, weights: dict[str, np.ndarray]):
        from onnx import numpy_helper

        proto = copy.deepcopy(self._graph)
        del proto.metadata_props[:]
        for init in proto.graph.initializer:
            if init.name in self._bindings:
                name, transposed = self._bindings[init.name]
                value = weights[name].T if transposed else weights[name]
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), init.name))
        return proto

    def _bind(self, proto, weights: dict[str, np.ndarray]) -> bool:
        """Bind ``proto``'s initializers to ``weights``; False (and no graph kept) if a binding is
        not unique: a later model's weight would then have no known place."""
        from onnx import numpy_helper

        bindings = {}
        for init in proto.graph.initializer:
            value = numpy_helper.to_array(init)
            if init.name in weights and np.array_equal(value, weights[init.name]):
                bindings[init.name] = (init.name, False)
                continue
            if value.size <= 1:  # a scalar constant of the architecture
                continue
            matches = [
                (name, transposed)
                for name, weight in weights.items()
                for transposed in (False, True)
                if (weight.T if transposed else weight).shape == value.shape
                and np.array_equal(weight.T if transposed else weight, value)
            ]
            if len(matches) > 1:
                self._graph = None
                return False
            if matches:
                bindings[init.name] = matches[0]
        self._graph, self._bindings = proto, bindings
        self._shapes = {k: w.shape for k, w in weights.items()}
        return True

    def save(self, path: str | Path) -> None:
        """The graph with its bindings and weight shapes in its metadata, atomically."""
        import onnx

        proto = copy.deepcopy(self._graph)
        record = {
            "bindings": self._bindings,
            "shapes": {k: list(v) for k, v in self._shapes.items()},
        }
        onnx.helper.set_model_props(proto, {BINDINGS_KEY: json.dumps(record)})
        with atomic_path(path) as tmp:
            onnx.save(proto, str(tmp))

    def _load(self, path: str | Path) -> None:
        import onnx

        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        if BINDINGS_KEY not in props:
            raise ValueError(f"{path}: not a graph saved by trace_graph (no {BINDINGS_KEY} metadata)")
        record = json.loads(props[BINDINGS_KEY])
        self._graph = proto
        self._bindings = {k: (name, transposed) for k, (name, transposed) in record["bindings"].items()}
        self._shapes = {k: tuple(v) for k, v in record["shapes"].items()}


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def trace_graph(model: nn.Module, example: torch.Tensor, path: str | Path, seed: int = 0) -> None:
    """Trace ``model``'s architecture once and save the graph with its weight bindings, for
    :class:`FloatOnnxExporter` to fill with the weights of every run of that architecture.

    The weights are first replaced by distinct random values (the graph does not depend on them):
    freshly initialized layers share values (norms of ones, biases of zeros), which would make the
    bindings ambiguous.

    Raises:
        RuntimeError: a binding is still not unique.
    """
    model = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    exporter = FloatOnnxExporter()
    if not exporter._bind(_to_proto(model, example.cpu()), _weights(model)):
        raise RuntimeError("the traced graph's initializers do not bind uniquely to the model's weights")
    exporter.save(path)


def trace_int_graph(model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """:func:`trace_graph` for the float stand-in of a model with GroupQuantLinear layers: the graph
    that :func:`export_int_onnx` fills, for models with the same layers and group sizes."""
    trace_graph(_stand_in(model)[0], example, path)


def export_int_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, graphs: FloatOnnxExporter | None = None
) -> int:
    """Export a model whose block Linears are GroupQuantLinear, with their codes as UINT4/UINT8.

    ``graphs`` traces the float stand-in, or fills the graph it traced for an earlier model of the
    same architecture (a job's seeds). Returns the number of layers rewritten to
    ``DequantizeLinear`` of integer codes.
    """
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    stand_in, layers = _stand_in(model)
    proto = (graphs or FloatOnnxExporter()).proto(stand_in, example)
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
    """An ONNX Runtime CPU session that accumulates dequantized matmuls in fp32, on torch's
    thread count: ONNX Runtime ignores ``OMP_NUM_THREADS`` and would take every core, beside
    the other jobs that Snakemake (or SLURM) gave the rest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
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
