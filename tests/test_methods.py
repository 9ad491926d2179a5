import re

import pytest
import torch

from vitpeft.methods import METHOD_WILDCARD, lora, method_config, parse_method_name, prepare_model
from vitpeft.models import count_parameters


def test_name_grammar():
    assert parse_method_name("full") == ("full", {})
    assert parse_method_name("lora_r16") == ("lora", {"r": 16})
    for good in ["full", "linear", "scratch", "lora_r2", "lora_r32"]:
        assert re.fullmatch(METHOD_WILDCARD, good)
    for bad in ["lora", "lora_r", "lora_rx", "fulll", "lora_r8_digits"]:
        assert not re.fullmatch(METHOD_WILDCARD, bad)
        with pytest.raises(ValueError, match="known forms"):
            parse_method_name(bad)


@pytest.mark.parametrize("name", ["lora_r0", "qlora3_r8", "adalora"])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match=name):
        method_config(name)


def test_bad_values_are_rejected():
    with pytest.raises(ValueError, match="dropout"):
        method_config("lora_r4", {"lora": {"dropout": 1.5}})
    with pytest.raises(ValueError, match="lr must be > 0"):
        method_config("full", {"full": {"lr": 0}})


def test_full_and_linear_trainable_params(tiny_model):
    head = sum(p.numel() for p in tiny_model.get_classifier().parameters())
    total = count_parameters(tiny_model)["total"]
    assert count_parameters(prepare_model(tiny_model, method_config("full")))["trainable"] == total
    assert count_parameters(prepare_model(tiny_model, method_config("linear")))["trainable"] == head


@pytest.mark.parametrize("r", [2, 8, 32])
@pytest.mark.parametrize(
    "targets", [("attn.qkv", "attn.proj"), ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
)
def test_lora_counts_equal_the_formula_and_skip_patch_embed(tiny_model, r, targets):
    cfg = method_config(f"lora_r{r}", {"lora": {"target_modules": list(targets)}})
    depth, dim = len(tiny_model.blocks), tiny_model.embed_dim
    shapes = {
        "attn.qkv": (dim, 3 * dim),
        "attn.proj": (dim, dim),
        "mlp.fc1": (dim, 4 * dim),
        "mlp.fc2": (4 * dim, dim),
    }
    formula = depth * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets) + (dim + 1) * 10
    assert lora.expected_trainable_params(tiny_model, cfg) == formula
    model = prepare_model(tiny_model, cfg)
    assert count_parameters(model)["trainable"] == formula
    adapted = {
        n for n, m in model.named_modules() if hasattr(m, "lora_A") and "lora_A" not in n.split(".")[-1]
    }
    assert not any("patch_embed" in n for n in adapted)
    assert len(adapted) == depth * len(targets)


def test_lora_forward_backward_and_merge_agree(tiny_model):
    model = prepare_model(tiny_model, method_config("lora_r4"))
    x = torch.randn(3, 3, 16, 16)
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():  # B starts at zero; make the update non-trivial before merging
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()
    unmerged = model(x)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "VisionTransformer"
    torch.testing.assert_close(merged(x), unmerged, rtol=1e-4, atol=1e-5)
