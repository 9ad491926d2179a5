import re

import pytest
import torch
from conftest import prepare

from vitpeft.config import ModelSpec
from vitpeft.methods import METHOD_WILDCARD, adalora, lora, method_config, parse_method_name
from vitpeft.models import count_parameters, create_model

ALL_METHODS = ["full", "scratch", "linear", "lora_r4", "qlora8_r4", "qlora4_r4", "adalora_r4", "qalora4_r4"]


def test_name_grammar():
    assert parse_method_name("full") == ("full", {})
    assert parse_method_name("lora_r16") == ("lora", {"r": 16})
    assert parse_method_name("qlora4_r8") == ("qlora", {"bits": 4, "r": 8})
    assert parse_method_name("adalora_r8") == ("adalora", {"r": 8})
    assert parse_method_name("qalora4_r8") == ("qalora", {"bits": 4, "r": 8})
    for good in [
        "full",
        "linear",
        "scratch",
        "lora_r2",
        "lora_r32",
        "qlora8_r8",
        "adalora_r16",
        "qalora2_r4",
    ]:
        assert re.fullmatch(METHOD_WILDCARD, good)
    for bad in [
        "lora",
        "lora_r",
        "lora_rx",
        "fulll",
        "lora_r8_digits",
        "qlora_r8",
        "adalora4_r8",
        "qalora_r8",
    ]:
        assert not re.fullmatch(METHOD_WILDCARD, bad)
        with pytest.raises(ValueError, match="known forms"):
            parse_method_name(bad)


@pytest.mark.parametrize(
    ("name", "hyperparameters", "message"),
    [
        ("lora_r0", None, "rank r must be a positive integer, got 0"),
        ("qlora3_r8", None, "8 or 4 bits, got 3"),
        ("qlora4_r0", None, "rank r must be a positive integer"),
        ("adalora_r8", {"adalora": {"init_r": 4}}, "target rank 8 is above its initial rank init_r=4"),
        ("adalora_r8", {"adalora": {"tinit_fraction": 0.6, "tfinal_fraction": 0.5}}, "tinit_fraction"),
        ("qlora4_r8", {"qlora": {"quant_type": "int3"}}, "quant_type"),
        ("lora_r4", {"lora": {"dropout": 1.5}}, "dropout"),
        ("full", {"full": {"lr": 0}}, "lr must be > 0"),
        ("adalora", None, "unknown method 'adalora'"),
    ],
)
def test_bad_names_and_values_are_rejected(name, hyperparameters, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        method_config(name, hyperparameters)


@pytest.mark.parametrize("model_name", ["deit_tiny", "deit_small", "vit_small"])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_forward_backward_every_method_and_model(model_name, method):
    torch.manual_seed(0)
    spec = ModelSpec(model_name, img_size=16, patch_size=8, kwargs={"depth": 1})
    prepared = prepare(create_model(spec, num_classes=5), method, total_steps=20)
    x = torch.randn(2, 3, 16, 16)
    logits = prepared.model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    loss = logits.logsumexp(1).mean() + (prepared.extra_loss() if prepared.extra_loss else 0)
    loss.backward()
    trainable = [p for p in prepared.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert count_parameters(prepared.model)["trainable"] == prepared.expected_trainable


def test_full_and_linear_trainable_params(tiny_model):
    head = sum(p.numel() for p in tiny_model.get_classifier().parameters())
    total = count_parameters(tiny_model)["total"]
    assert count_parameters(prepare(tiny_model, "linear").model)["trainable"] == head
    assert count_parameters(prepare(tiny_model, "full").model)["trainable"] == total


SHAPES = {"attn.qkv": (192, 576), "attn.proj": (192, 192), "mlp.fc1": (192, 768), "mlp.fc2": (768, 192)}


@pytest.mark.parametrize("r", [2, 8, 32])
@pytest.mark.parametrize("targets", [("attn.qkv", "attn.proj"), tuple(SHAPES)])
def test_lora_counts_equal_the_formula_and_skip_patch_embed(tiny_model, r, targets):
    depth = len(tiny_model.blocks)
    formula = depth * sum(r * sum(SHAPES[t]) for t in targets) + (192 + 1) * 10
    prepared = prepare(tiny_model, f"lora_r{r}", {"lora": {"target_modules": list(targets)}})
    assert prepared.expected_trainable == formula
    assert count_parameters(prepared.model)["trainable"] == formula
    adapted = {
        n for n, m in prepared.model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    }
    assert len(adapted) == depth * len(targets)
    assert not any("patch_embed" in n for n in adapted)


def perturb_lora_b(model):
    with torch.no_grad():  # B starts at zero; make the update non-trivial before merging
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


@pytest.mark.parametrize(("method", "tolerance"), [("lora_r4", 1e-5), ("adalora_r4", 1e-5)])
def test_merged_and_unmerged_logits_agree(tiny_model, method, tolerance):
    model = prepare(tiny_model, method).model
    perturb_lora_b(model)
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    unmerged = model(x)
    model.merge_adapter()
    torch.testing.assert_close(model(x), unmerged, rtol=tolerance, atol=tolerance)
    model.unmerge_adapter()
    torch.testing.assert_close(model(x), unmerged, rtol=tolerance, atol=tolerance)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "VisionTransformer"
    torch.testing.assert_close(merged(x), unmerged, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(("bits", "layer", "bound"), [(8, "Linear8bitLt", 0.05), (4, "Linear4bit", 0.25)])
def test_qlora_uses_peft_bitsandbytes_layers_over_a_quantized_base(tiny_model, bits, layer, bound):
    probe = torch.randn(8, 3, 16, 16)
    prepared = prepare(tiny_model, f"qlora{bits}_r4", probe_batch=probe)
    adapted = [m for n, m in prepared.model.named_modules() if n.endswith(("attn.qkv", "attn.proj"))]
    assert adapted and all(
        type(m).__module__ == "peft.tuners.lora.bnb" and type(m).__name__ == layer for m in adapted
    )
    fc1 = prepared.model.base_model.model.blocks[0].mlp.fc1  # frozen and quantized, no adapter
    assert type(fc1).__module__.startswith("bitsandbytes") and not fc1.weight.requires_grad
    assert type(prepared.model.base_model.model.head.original_module) is torch.nn.Linear
    report = prepared.report
    depth = len(tiny_model.blocks)
    assert report["quantized_layers"] == 4 * depth
    assert report["base_linear_bytes_fp32"] == depth * 4 * sum(a * b for a, b in SHAPES.values())
    ratio = report["base_linear_bytes_quantized"] / report["base_linear_bytes_fp32"]
    assert ratio == pytest.approx(1 / 4 if bits == 8 else 1 / 8, rel=0.15)  # codes plus their scales
    assert 0 < report["quant_feature_rel_error"] < bound


def test_adalora_formula_schedule_and_budget(tiny_model):
    cfg = method_config("adalora_r4")
    assert cfg.init_r == 6
    assert adalora.schedule(cfg, 100) == (10, 20)
    with pytest.raises(ValueError, match="too few"):
        adalora.schedule(
            method_config("adalora_r4", {"adalora": {"tinit_fraction": 0.5, "tfinal_fraction": 0.45}}), 4
        )
    layers = lora.target_layers(tiny_model, cfg)
    prepared = prepare(tiny_model, "adalora_r4", total_steps=30)
    formula = sum(6 * (m.in_features + m.out_features + 1) for m in layers.values()) + 1930
    assert prepared.expected_trainable == formula
    model = prepared.model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.randn(4, 3, 16, 16)
    for step in range(1, 31):
        loss = model(x).logsumexp(1).mean() + prepared.extra_loss()
        loss.backward()
        optimizer.step()
        prepared.after_step(step, False)
        optimizer.zero_grad()
    ranks = prepared.epoch_record()["adalora_ranks"]
    assert set(ranks) == set(layers)
    assert sum(ranks.values()) <= prepared.report["adalora_rank_budget"] == 4 * len(layers)
    assert max(ranks.values()) <= 6


def test_adalora_passes_over_skipped_fp16_steps_before_it_has_importance_scores(tiny_model):
    """fp16's first steps may all be skipped (the scaler starts at 2**16): by the first masking
    step (here the second) there are then no scores, and peft's masking would fail on them."""
    prepared = prepare(tiny_model, "adalora_r4", total_steps=10)
    for step in (1, 2, 3):
        prepared.after_step(step, True)
    assert not prepared.model.base_model.rankallocator.exp_avg_ipt


def test_adalora_rank_counts_stay_frozen_when_peft_moves_the_adapter_to_its_base(tiny_model):
    """peft moves each new adapter to its base layer's device and dtype, re-wrapping what it moved
    as a trainable Parameter. On a GPU (base on cuda, adapter made on the CPU) that made AdaLoRA's
    rank counts trainable (device_check on an H200: 24 parameters above the formula on deit_small).
    A bf16 base makes peft take the same path on the CPU."""
    prepared = prepare(tiny_model.to(torch.bfloat16), "adalora_r4")
    ranknums = [p for n, p in prepared.model.named_parameters() if ".ranknum." in n]
    assert ranknums and not any(p.requires_grad for p in ranknums)


def test_orthogonal_regularizer_is_zero_for_orthonormal_factors(tiny_model):
    model = prepare(tiny_model, "adalora_r4").model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("lora_A.default", "lora_B.default")):
                q, _ = torch.linalg.qr(torch.randn(max(p.shape), min(p.shape)))
                p.copy_(q.T if p.shape[0] < p.shape[1] else q)
    assert adalora.orthogonal_regularizer(model).item() == pytest.approx(0.0, abs=1e-5)


def test_bitsandbytes_says_it_casts_8bit_inputs_once_not_every_forward(tiny_model, caplog):
    prepared = prepare(tiny_model, "qlora8_r4", probe_batch=torch.randn(4, 3, 16, 16))
    with caplog.at_level("WARNING", logger="bitsandbytes"):
        for _ in range(3):
            prepared.model(torch.randn(4, 3, 16, 16)).sum().backward()
    casts = [r for r in caplog.records if "inputs will be cast" in r.getMessage()]
    assert len(casts) <= 1  # none if the probe's forward (above) already said it


@pytest.mark.parametrize("bits", [8, 4])
def test_qlora_trains_again_after_an_evaluation(tiny_model, bits):
    prepared = prepare(tiny_model, f"qlora{bits}_r4", probe_batch=torch.randn(4, 3, 16, 16))
    model, x = prepared.model, torch.randn(4, 3, 16, 16)
    for _ in range(2):  # train, evaluate, train: what the trainer does every epoch
        model.train()
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
