"""The extension guides in docs/ work as written: their code blocks run, in order, here."""

import re

import pytest
from conftest import REPO

from vitpeft import compute
from vitpeft.config import ModelSpec
from vitpeft.data.sources import split_sizes
from vitpeft.methods import method_config


def run_guide(name: str) -> dict:
    text = (REPO / "docs" / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{name} has no python example"
    namespace = {"__name__": f"guide_{name.removesuffix('.md')}"}
    for block in blocks:
        exec(compile(block, f"docs/{name}", "exec"), namespace)
    return namespace


@pytest.fixture
def registries(monkeypatch):
    """The registries the guides add to, restored afterwards."""
    from vitpeft import config, data, methods
    from vitpeft.data import sources

    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    monkeypatch.setattr(config, "MODEL_ARCHS", dict(config.MODEL_ARCHS))
    monkeypatch.setattr(config, "MODEL_WIDTHS", dict(config.MODEL_WIDTHS))
    monkeypatch.setattr(config, "MODEL_DEPTHS", dict(config.MODEL_DEPTHS))
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    monkeypatch.setattr(sources, "KIND_SIZES", dict(sources.KIND_SIZES))


def test_add_a_method_guide(registries):
    guide = run_guide("add_a_method.md")
    depth, width, classes = 2, 192, 10
    biases = depth * (3 * width + width + 4 * width + width + 2 * width)  # qkv, proj, fc1, fc2, 2 norms
    assert guide["prepared"].expected_trainable == guide["trainable"] == biases + (width + 1) * classes
    assert guide["prepared"].model.blocks[0].attn.qkv.bias.requires_grad
    assert not guide["prepared"].model.blocks[0].attn.qkv.weight.requires_grad


def test_add_a_model_guide(registries):
    guide = run_guide("add_a_model.md")
    assert guide["model"].default_cfg["architecture"] == "vit_tiny_patch16_224"
    # Its depth entry lets the study's compute be estimated: ViT-Tiny has DeiT-tiny's shape.
    deit_tiny = ModelSpec("deit_tiny", img_size=32, patch_size=8, kwargs={"depth": 2})
    full = method_config("full")
    assert compute.image_flops(guide["spec"], full, 10) == compute.image_flops(deit_tiny, full, 10)


def test_add_a_dataset_guide(registries):
    guide = run_guide("add_a_dataset.md")
    counts = guide["manifest"]["counts_per_class"]
    assert sum(map(sum, counts.values())) == 400 and len(counts["test"]) == 2
    # Its sizes entry gives the study's compute estimate the split sizes the pipeline makes.
    sizes = split_sizes(guide["spec"])
    assert sizes == {**{split: sum(c) for split, c in counts.items()}, "classes": 2}
    assert abs(counts["train"][0] - counts["train"][1]) <= 0.2 * sum(counts["train"])
