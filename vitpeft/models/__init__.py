"""ViT backbones: creation, weight loading with validation, and parameter counts.

Backbone weights come from one of four sources (the config's ``backbone.source``):
``timm`` (the hub, for users with internet), ``file`` (a local checkpoint), ``pretrain`` (the
pipeline's own pretrain rule), or ``hf`` (a transformers ViT/DeiT from the hub or a
``save_pretrained`` folder, :mod:`vitpeft.models.hf`). ``scratch`` is random initialization, used
by the transfer baseline.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vitpeft.config import ModelSpec
from vitpeft.io import atomic_path, write_json


def create_model(
    spec: ModelSpec,
    num_classes: int,
    weights: str | Path | None = None,
    hub: bool = False,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build ``spec``'s architecture with a fresh ``num_classes`` head.

    Args:
        weights: a safetensors or torch checkpoint to load into the backbone (its head is dropped).
        hub: load the pretrained weights of timm's hub, or of an ``hf`` model's id; timm resamples
            them.
        drop_path_rate: stochastic depth of the training (``TrainConfig.drop_path_rate``); it
            adds no weights, so a model built without it loads the same checkpoint. timm only:
            transformers' ViT and DeiT have no stochastic depth.
    """
    if spec.is_hf:
        if drop_path_rate > 0:
            raise ValueError(
                f"train.drop_path_rate {drop_path_rate}: transformers' ViT and DeiT have no "
                f"stochastic depth (model {spec.name!r}, backbone.source hf); set it to 0"
            )
        from vitpeft.models import hf

        model = hf.create_model(spec.backbone["id"], num_classes, pretrained=hub)
    else:
        kwargs = dict(spec.create_kwargs)
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        model = timm.create_model(
            spec.arch,
            pretrained=hub,
            num_classes=num_classes,
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            **kwargs,
        )
    if weights is not None:
        load_backbone(model, weights)
    return model


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """Load backbone weights, resampling position and patch embeddings to the model's geometry.

    The checkpoint's classifier is dropped (the target task has its own head). Every other key must
    load: a missing or unexpected key, or a shape that cannot be resampled, is an error.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = Path(path)
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
    head_keys = {f"{name}" for name, _ in model.get_classifier().named_parameters(prefix="head")}
    state = {k: v for k, v in state.items() if k not in head_keys}
    state = checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    wrong = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    }
    if wrong:
        raise ValueError(f"{path}: shapes do not match the model (checkpoint, model): {wrong}")
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - head_keys
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: missing keys {sorted(missing)}, unexpected keys {sorted(result.unexpected_keys)}"
        )


def save_backbone(
    model: nn.Module, weights_path: str | Path, meta_path: str | Path, meta: dict[str, Any]
) -> None:
    """Write the weights (safetensors) and a JSON record of what made them, both atomically."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(state, str(tmp))
    write_json(meta_path, {**meta, "parameters": count_parameters(model)})


def logical_numel(param: torch.Tensor) -> int:
    """Elements a parameter represents: packed 4-bit weights hold two per stored byte."""
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Total and trainable parameter counts, and the total per module type (leaf-level owners)."""
    by_type: Counter[str] = Counter()
    for module in model.modules():
        own = sum(logical_numel(p) for p in module.parameters(recurse=False))
        if own:
            by_type[type(module).__name__] += own
    return {
        "total": sum(logical_numel(p) for p in model.parameters()),
        "trainable": sum(logical_numel(p) for p in model.parameters() if p.requires_grad),
        "by_type": dict(sorted(by_type.items())),
    }
