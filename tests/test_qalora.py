import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import prepare
from torch import nn

from vitpeft import config as study_config
from vitpeft.config import ExportConfig
from vitpeft.methods import method_config
from vitpeft.methods.qalora_layer import QALoraLinear, merge_qalora
from vitpeft.models import count_parameters
from vitpeft.quant.groupwise import GroupQuantLinear, dequantize, quantize


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantizer_codes_range_and_error_bound(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 32)
    weight[0, :8] = 0.5  # a constant group: scale falls back, every code is 0, value kept exactly
    codes, scales, zeros = quantize(weight, bits, group_size=8)
    assert codes.dtype == torch.uint8 and codes.shape == weight.shape
    assert scales.shape == zeros.shape == (6, 4) and scales.dtype == zeros.dtype == torch.float16
    assert int(codes.max()) <= 2**bits - 1
    restored = dequantize(codes, scales, zeros)
    assert restored.dtype == torch.float32
    step = scales.float().repeat_interleave(8, dim=1)
    assert ((restored - weight).abs() <= step / 2 + 1e-6).all()  # round-to-nearest: half a step
    assert torch.equal(restored[0, :8], weight[0, :8]) and (codes[0, :8] == 0).all()
    # min-max in fp16: the zero is the largest fp16 at or below the group's minimum, and the scale
    # the smallest fp16 whose grid still reaches the maximum
    low, high = weight.reshape(6, 4, 8).amin(-1), weight.reshape(6, 4, 8).amax(-1)
    levels, varied = 2**bits - 1, high > low
    up, down = torch.full_like(zeros, torch.inf), torch.full_like(zeros, -torch.inf)
    assert (zeros.float() <= low).all() and (torch.nextafter(zeros, up).float() > low).all()
    assert (zeros.float() + levels * scales.float() >= high)[varied].all()
    assert (zeros.float() + levels * torch.nextafter(scales, down).float() < high)[varied].all()


def test_quantizer_rejects_bad_bits_and_groups():
    with pytest.raises(ValueError, match=re.escape("bits must be one of (2, 3, 4, 8), got 5")):
        quantize(torch.randn(4, 16), 5, 8)
    with pytest.raises(ValueError, match="group_size 6 does not divide in_features 16"):
        quantize(torch.randn(4, 16), 4, 6)


def tiny_qalora_layer(bits=4, group_size=4, r=2, dtype=torch.float32):
    torch.manual_seed(0)
    linear = nn.Linear(16, 5)
    layer = QALoraLinear(GroupQuantLinear.from_linear(linear, bits, group_size), r=r, alpha=4.0).to(dtype)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.5)  # B starts at zero; make the update non-trivial
    return layer


def test_qalora_layer_forward_uses_the_quantized_base_and_pooled_input():
    layer = tiny_qalora_layer()
    x = torch.randn(3, 7, 16)
    base = x @ layer.base.dequantized_weight().T + layer.base.bias
    pooled = x.reshape(3, 7, 4, 4).mean(-1)
    expected = base + pooled @ layer.lora_A.weight.T @ layer.lora_B.weight.T * layer.scaling
    torch.testing.assert_close(layer(x), expected)


def test_qalora_layer_gradients_match_finite_differences():
    layer = tiny_qalora_layer(dtype=torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64, requires_grad=True)
    a = layer.lora_A.weight.detach().clone().requires_grad_(True)
    b = layer.lora_B.weight.detach().clone().requires_grad_(True)

    def forward(x, a, b):
        return torch.func.functional_call(layer, {"lora_A.weight": a, "lora_B.weight": b}, (x,))

    assert torch.autograd.gradcheck(forward, (x, a, b))


def saved_for_backward(forward) -> list[torch.Tensor]:
    """Every tensor that autograd keeps for backward while ``forward()`` runs."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return saved


def test_qalora_layer_keeps_no_float_copy_of_the_base_weight_for_backward():
    layer = tiny_qalora_layer()
    x = torch.randn(3, 7, 16, requires_grad=True)
    saved = saved_for_backward(lambda: layer(x))
    weight_shape = (layer.base.out_features, layer.base.in_features)
    assert not [t for t in saved if t.is_floating_point() and t.shape == weight_shape]
    # of the base, backward keeps its stored codes (and scales, zeros): references, not copies
    base = [t for t in saved if t.shape == weight_shape]
    assert base and all(t.data_ptr() == layer.base.codes.data_ptr() for t in base)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_qalora_layer_gradients_equal_those_through_a_float_weight(autocast):
    layer = tiny_qalora_layer()
    x = torch.randn(3, 7, 16)
    upstream = torch.randn(3, 7, 5)

    def through_a_float_weight(x):  # autograd through the dequantized weight, as before the recompute
        base = F.linear(x, layer.base.dequantized_weight(), layer.base.bias)
        return base + layer.lora_B(layer.lora_A(layer.pool(x))) * layer.scaling

    results = []
    for forward in (layer, through_a_float_weight):
        layer.zero_grad()
        x_in = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = forward(x_in)
        (y.float() * upstream).sum().backward()
        results.append((y, x_in.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad))
    tolerance = {"rtol": 1.6e-2, "atol": 1e-3} if autocast else {}
    for recomputed, kept in zip(*results, strict=True):
        torch.testing.assert_close(recomputed, kept, **tolerance)  # dtypes too: grad_x in x's fp32


def test_group_quant_linear_gradients_match_finite_differences():
    torch.manual_seed(0)
    layer = GroupQuantLinear.from_linear(nn.Linear(16, 5), bits=4, group_size=4).double()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    bias = layer.bias.detach().clone().requires_grad_(True)  # frozen in every method; checked anyway

    def forward(x, bias):
        return torch.func.functional_call(layer, {"bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, bias))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_merge_folds_the_adapter_into_the_zeros_exactly(bits):
    layer = tiny_qalora_layer(bits=bits)
    merged = layer.merged()
    assert type(merged) is GroupQuantLinear and merged.bits == bits
    assert torch.equal(merged.codes, layer.base.codes) and torch.equal(merged.scales, layer.base.scales)
    assert not torch.equal(merged.zeros, layer.base.zeros)
    x = torch.randn(64, 16)
    unmerged, after = layer(x), merged(x)
    relative = ((after - unmerged).abs().max() / unmerged.abs().max()).item()
    assert relative < 1e-5


def test_prepare_quantizes_every_block_linear_and_counts_the_formula(tiny_model):
    probe = torch.randn(8, 3, 16, 16)
    prepared = prepare(tiny_model, "qalora4_r8", {"qalora": {"group_size": 16}}, probe_batch=probe)
    model = prepared.model
    depth = len(model.blocks)
    adapted = [n for n, m in model.named_modules() if isinstance(m, QALoraLinear)]
    frozen = [n for n, m in model.named_modules() if type(m) is GroupQuantLinear]
    assert len(adapted) == 2 * depth and all(n.endswith(("attn.qkv", "attn.proj")) for n in adapted)
    assert len(frozen) == 4 * depth  # the adapters' bases plus fc1, fc2
    assert type(model.head) is nn.Linear and model.head.weight.requires_grad
    # r * (in / g + out) per adapted layer: qkv 192 -> 576, proj 192 -> 192; plus the head
    formula = depth * 8 * ((12 + 576) + (12 + 192)) + (192 + 1) * 10
    assert prepared.expected_trainable == formula == count_parameters(model)["trainable"]
    report = prepared.report
    # codes at 4 bits, plus an fp16 scale and an fp16 zero per 16 weights: 4 + 32 / 16 bits
    assert report["base_bits_per_weight"] == 6.0
    assert report["base_linear_bytes_quantized"] == report["base_linear_bytes_fp32"] * 6 / 32
    assert 0 < report["quant_weight_rel_error_mean"] <= report["quant_weight_rel_error_max"] < 0.2
    assert 0 < report["quant_feature_rel_error"] < 0.25


def test_merged_model_is_pure_int_codes_with_the_same_logits(tiny_model):
    model = prepare(tiny_model, "qalora4_r8", {"qalora": {"group_size": 16}}).model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x = torch.randn(16, 3, 16, 16)
    unmerged = model(x)
    merged_model = copy.deepcopy(model)
    assert len(merge_qalora(merged_model)) == 2 * len(model.blocks)
    assert not any(isinstance(m, QALoraLinear) for m in merged_model.modules())
    # stored as the base was: fp16 zeros, each the nearest fp16 to the exact sum
    qkv, merged_qkv = model.blocks[0].attn.qkv, merged_model.blocks[0].attn.qkv
    exact = qkv.base.zeros.float() + qkv.zero_update()
    assert merged_qkv.zeros.dtype == torch.float16 and torch.equal(merged_qkv.zeros, exact.half())
    merged = merged_model(x)
    gap = ((merged - unmerged).abs().max() / unmerged.abs().max()).item()
    assert gap <= ExportConfig().fp16_zero_rtol  # the tolerance the export checks the merge with
    assert torch.equal(merged.argmax(1), unmerged.argmax(1))
    # the folding itself is exact: with zeros held in fp64 nothing is rounded away
    model.double()
    wide = copy.deepcopy(model)
    merge_qalora(wide)
    unmerged, merged = model(x.double()), wide(x.double())
    assert ((merged - unmerged).abs().max() / unmerged.abs().max()).item() < 1e-12


@pytest.mark.parametrize(
    ("name", "hyperparameters", "message"),
    [
        ("qalora5_r8", None, "bits must be one of (2, 3, 4, 8), got 5"),
        ("qalora4_r8", {"qalora": {"group_size": 10}}, "group_size 10 does not divide in_features 192"),
        ("qalora4_r16", {"qalora": {"group_size": 16}}, "rank 16 exceeds the pooled dimension 12"),
    ],
)
def test_bad_qalora_settings_fail_before_training(tiny_model, name, hyperparameters, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare(tiny_model, name, hyperparameters)
    with pytest.raises(ValueError, match=re.escape(message)):  # and already when the config loads
        method_config(name, hyperparameters).check_widths({"attn.qkv": 192, "mlp.fc2": 768})


def test_config_load_names_a_bad_group_size(tiny_config):
    tiny_config["studies"]["tiny"]["methods"] = ["qalora4_r8"]
    tiny_config["methods"]["qalora"] = {"group_size": 40}
    with pytest.raises(study_config.ConfigError, match="'qalora4_r8'.*group_size 40 does not divide"):
        study_config.validate(tiny_config)
