import pytest
import torch

from vitpeft.config import ModelSpec
from vitpeft.models import count_parameters, create_model, load_backbone, save_backbone


def test_backbone_round_trip_resamples_position_embedding(tmp_path, tiny_model, tiny_spec):
    save_backbone(tiny_model, tmp_path / "w.safetensors", tmp_path / "w.json", {"note": "test"})
    same = create_model(tiny_spec, num_classes=3, weights=tmp_path / "w.safetensors")
    for name, value in tiny_model.state_dict().items():
        if not name.startswith("head"):
            torch.testing.assert_close(same.state_dict()[name], value)
    assert same.get_classifier().out_features == 3
    bigger = ModelSpec(
        "deit_tiny", img_size=32, patch_size=4, backbone={"source": "file"}, kwargs={"depth": 2}
    )
    model = create_model(bigger, num_classes=10, weights=tmp_path / "w.safetensors")
    assert model.pos_embed.shape == (1, 1 + 64, 192)
    torch.testing.assert_close(model.cls_token, tiny_model.cls_token)


def test_wrong_architecture_is_rejected(tmp_path, tiny_model):
    save_backbone(tiny_model, tmp_path / "w.safetensors", tmp_path / "w.json", {})
    deeper = ModelSpec(
        "deit_tiny", img_size=16, patch_size=4, backbone={"source": "file"}, kwargs={"depth": 3}
    )
    with pytest.raises(ValueError, match="missing keys.*blocks.2"):
        create_model(deeper, num_classes=10, weights=tmp_path / "w.safetensors")
    small = ModelSpec(
        "deit_small", img_size=16, patch_size=4, backbone={"source": "file"}, kwargs={"depth": 2}
    )
    with pytest.raises(ValueError, match="shapes do not match"):
        load_backbone(create_model(small, 10), tmp_path / "w.safetensors")


def test_parameter_counts(tiny_model):
    counts = count_parameters(tiny_model)
    assert counts["total"] == sum(p.numel() for p in tiny_model.parameters())
    assert sum(counts["by_type"].values()) == counts["total"]
    assert counts["by_type"]["Conv2d"] == 192 * 3 * 4 * 4 + 192


def test_a_model_is_what_its_name_says():
    """vit_w64_d4: width 64, 4 blocks, 2 heads on timm's ViT; the config's kwargs go on top."""
    spec = ModelSpec("vit_w64_d4", img_size=8, patch_size=4, backbone={"source": "file"})
    model = create_model(spec, num_classes=10)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (64, 4, 2)
    # 4 blocks of 12 d^2 + 13 d (qkv, proj, fc1, fc2, two norms), patch embedding, class token,
    # 1 + 4 position embeddings, final norm, head
    d = 64
    expected = 4 * (12 * d * d + 13 * d) + (3 * 4 * 4 * d + d) + d + 5 * d + 2 * d + (10 * d + 10)
    assert count_parameters(model)["total"] == expected
    assert spec.block_widths() == {"attn.qkv": 64, "attn.proj": 64, "mlp.fc1": 64, "mlp.fc2": 256}
    deeper = ModelSpec(
        "vit_w64_d4", img_size=8, patch_size=4, backbone={"source": "file"}, kwargs={"depth": 2}
    )
    assert len(create_model(deeper, num_classes=10).blocks) == 2


def test_unknown_model_and_geometry():
    with pytest.raises(ValueError, match="unknown model 'vit_huge'"):
        ModelSpec("vit_huge")
    with pytest.raises(ValueError, match="backbone.source"):
        ModelSpec("vit_small", backbone={"source": "internet"})
