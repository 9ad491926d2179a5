"""What a quantized base stores: int8 or packed 4-bit codes on the device before anything measures
them, whatever device the model was on and whenever its first forward pass runs; and the true bits
per weight of every base, statistics included."""

import math
import re

import bitsandbytes
import pytest
import torch
from conftest import prepare
from torch import nn

from vitpeft.quant import bnb

# (in, out) of the block Linears of the tiny model (deit_tiny, depth 2)
SHAPES = {"attn.qkv": (192, 576), "attn.proj": (192, 192), "mlp.fc1": (192, 768), "mlp.fc2": (768, 192)}
BASES = [  # bits, 4-bit type, double quantization
    (8, "nf4", False),
    (4, "nf4", False),
    (4, "nf4", True),
    (4, "fp4", False),
]


def stored_bytes(in_features: int, out_features: int, bits: int, double_quant: bool) -> int:
    """What bitsandbytes stores for one layer's weight, from its documented formats."""
    weights = in_features * out_features
    if bits == 8:
        return weights + 4 * out_features  # int8 codes; one fp32 absmax per output row
    blocks = math.ceil(weights / 64)  # 4-bit codes, two per byte, one absmax per block of 64
    code_book = 16 * 4  # the 16 NF4 or FP4 values, fp32
    if not double_quant:
        return weights // 2 + 4 * blocks + code_book
    # double quantization: the block absmax as uint8 around an fp32 mean, in blocks of 256 with
    # an fp32 absmax each and their own 256-entry fp32 code book
    nested = 4 * math.ceil(blocks / 256) + 256 * 4
    return weights // 2 + blocks + 4 + code_book + nested


def base_linears(model: nn.Module) -> dict[str, nn.Module]:
    inside = re.compile(r"blocks\.\d+\..+")  # every Linear of timm's transformer blocks
    return {n: m for n, m in model.named_modules() if inside.fullmatch(n) and isinstance(m, nn.Linear)}


@pytest.fixture
def moves_do_nothing(monkeypatch):
    """The model is already on its device, so moving it there again does nothing. On a GPU this is
    what bitsandbytes' 8-bit weights get: ``Int8Params`` quantizes only on a move from the CPU."""
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)


@pytest.mark.parametrize(("bits", "quant_type", "double_quant"), BASES)
def test_base_is_quantized_when_swapped_in_before_any_move_or_forward(
    tiny_model, moves_do_nothing, bits, quant_type, double_quant
):
    bnb.quantize_linear_layers(tiny_model, bits, torch.device("cpu"), quant_type, double_quant)
    layers = base_linears(tiny_model)
    assert len(layers) == 4 * len(tiny_model.blocks)
    for name, layer in layers.items():
        in_features, out_features = SHAPES[name.split(".", 2)[2]]
        weight = layer.weight
        if bits == 8:
            assert weight.dtype == torch.int8 and weight.shape == (out_features, in_features)
            assert weight.SCB.shape == (out_features,)
        else:
            assert weight.dtype == torch.uint8 and weight.numel() == in_features * out_features // 2
            assert weight.bnb_quantized and weight.quant_state.quant_type == quant_type
    expected = len(tiny_model.blocks) * sum(
        stored_bytes(i, o, bits, double_quant) for i, o in SHAPES.values()
    )
    assert bnb.base_linear_bytes(tiny_model) == expected
    with torch.no_grad():  # the first forward pass changes how bitsandbytes holds the 8-bit scales
        tiny_model.eval()(torch.randn(2, 3, 16, 16))
    assert bnb.base_linear_bytes(tiny_model) == expected


@pytest.mark.parametrize("method", ["qlora8_r4", "qlora4_r4"])
def test_a_mixed_precision_step_leaves_the_frozen_base_biases_as_they_were(tiny_model, method):
    """bitsandbytes' 8-bit layer recasts its bias in place to its input's dtype: under bf16 autocast
    an fp32 base's biases would be rounded for good, and the trained model would not be its rebuild.
    (The 4-bit layer casts its input to its compute dtype first, fp32 here.)"""
    with torch.no_grad():
        for layer in base_linears(tiny_model).values():
            layer.bias.normal_(0, 0.1)
    model = prepare(tiny_model, method).model.train()
    quantized = (bitsandbytes.nn.Linear8bitLt, bitsandbytes.nn.Linear4bit)
    biases = {
        f"{n}.bias": m.bias.detach().clone() for n, m in model.named_modules() if isinstance(m, quantized)
    }
    assert len(biases) == 4 * len(tiny_model.blocks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 3, 16, 16)).float().logsumexp(1).mean().backward()
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 16, 16))
    after = dict(model.named_parameters())
    for name, before in biases.items():
        assert after[name].dtype == before.dtype and torch.equal(after[name], before), name


@pytest.mark.parametrize(("bits", "stored"), [(8, "torch.int8"), (4, "torch.uint8")])
def test_feature_error_probe_runs_on_the_quantized_base(
    tiny_model, moves_do_nothing, monkeypatch, bits, stored
):
    seen = []
    probe_features = bnb.features

    def spy(model, batch):
        seen.append({str(m.weight.dtype) for m in model.modules() if bnb.is_bnb_linear(m)})
        return probe_features(model, batch)

    monkeypatch.setattr(bnb, "features", spy)
    prepared = prepare(tiny_model, f"qlora{bits}_r4", probe_batch=torch.randn(4, 3, 16, 16))
    assert seen == [set(), {stored}]  # the fp32 reference, then the quantized base
    assert prepared.report["quant_feature_rel_error"] > 0


def bits_per_weight(bits: int, double_quant: bool) -> float:
    weights = sum(i * o for i, o in SHAPES.values())
    return 8 * sum(stored_bytes(i, o, bits, double_quant) for i, o in SHAPES.values()) / weights


@pytest.mark.parametrize(
    ("method", "hyperparameters", "expected"),
    [
        ("qlora8_r4", None, bits_per_weight(8, False)),  # 8 + 32 / in: 8.125 here
        ("qlora4_r4", None, bits_per_weight(4, False)),
        ("qlora4_r4", {"qlora": {"double_quant": True}}, bits_per_weight(4, True)),
        ("qlora4_r4", {"qlora": {"quant_type": "fp4"}}, bits_per_weight(4, False)),
        ("qalora4_r8", {"qalora": {"group_size": 16}}, 4 + 2 * 16 / 16),  # fp16 scale and zero per 16
        ("qalora8_r4", {"qalora": {"group_size": 32}}, 8 + 2 * 16 / 32),
        ("lora_r4", None, 32.0),
        ("full", None, 32.0),
    ],
)
def test_every_base_reports_its_true_bits_per_weight(tiny_model, method, hyperparameters, expected):
    report = prepare(tiny_model, method, hyperparameters).report
    assert report["base_bits_per_weight"] == pytest.approx(expected, rel=1e-12)
    if "base_linear_bytes_quantized" in report:
        weights = report["base_linear_bytes_fp32"] / 4
        assert report["base_bits_per_weight"] == 8 * report["base_linear_bytes_quantized"] / weights


def test_importing_bitsandbytes_through_the_package_prints_nothing():
    """bitsandbytes' optional hub-kernel warning (AVX512-BF16 CPUs) is not printed by every job."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import vitpeft.methods, peft, bitsandbytes"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == ""
