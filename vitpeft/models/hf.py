"""transformers ViT and DeiT backbones behind the interface the trainer and the methods use.

``ViTForImageClassification`` or ``DeiTForImageClassification`` is loaded from a hub id or a
``save_pretrained`` folder (``backbone: {source: hf, id: ...}``). Its base model is kept and its
classifier replaced by ``head``, a Linear from the class token to the dataset's classes: what
both classes classify from. DeiT's distillation token still runs through the blocks, as in
``DeiTForImageClassification``; a distilled checkpoint's distillation head is dropped with the
classifier. The wrapper answers timm's calls (``forward`` returns logits, ``forward_features``,
``forward_head``, ``get_classifier``, ``no_weight_decay``, ``pretrained_cfg``, ``num_classes``),
so every method, the trainer and the export treat both libraries alike.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

# model_type -> (classification class, image processor class) in transformers
CLASSES = {
    "vit": ("ViTForImageClassification", "ViTImageProcessor"),
    "deit": ("DeiTForImageClassification", "DeiTImageProcessor"),
}


class HFViT(nn.Module):
    """A transformers ViT or DeiT base model with a new class-token head.

    Args:
        encoder: the base model (``ViTModel`` / ``DeiTModel`` without pooler).
        num_classes: classes of the new head.
        mean, std: the image normalization its weights were trained with.
        architecture: the transformers class it came from, for records and messages.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, mean, std, architecture: str):
        super().__init__()
        self.backbone = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        nn.init.normal_(self.head.weight, std=encoder.config.initializer_range)  # transformers' init
        nn.init.zeros_(self.head.bias)
        self.num_classes = num_classes
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std)}
        self.architecture = architecture

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, tokens, width), after the final norm."""
        return self.backbone(pixel_values=images).last_hidden_state

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features[:, 0]  # the class token, as ViT/DeiTForImageClassification classify it
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.head

    def no_weight_decay(self) -> set[str]:
        """Tokens and position embeddings take no decay, as in timm's ViTs."""
        return {"cls_token", "distillation_token", "mask_token", "position_embeddings"}

    def description(self) -> dict[str, Any]:
        """What rebuilds this architecture without its source (:func:`rebuild`)."""
        return {
            "architecture": self.architecture,
            "config": self.backbone.config.to_dict(),
            "num_classes": self.num_classes,
            "pretrained_cfg": self.pretrained_cfg,
        }


def _classes(model_type: str):
    import transformers

    if model_type not in CLASSES:
        raise ValueError(
            f"unknown architecture: transformers model_type {model_type!r}; supported: {list(CLASSES)}"
        )
    model_cls, processor_cls = CLASSES[model_type]
    return getattr(transformers, model_cls), getattr(transformers, processor_cls)


def image_statistics(model_id: str, model_type: str) -> tuple[list[float], list[float]]:
    """The mean and std of the checkpoint's image processor; its class's defaults if it has none
    (a ``save_pretrained`` folder of the model alone)."""
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(model_id)
    except OSError:
        processor = _classes(model_type)[1]()
        print(f"{model_id}: no image processor; {type(processor).__name__}'s mean and std", file=sys.stderr)
    return list(processor.image_mean), list(processor.image_std)


def create_model(model_id: str, num_classes: int, pretrained: bool = True) -> HFViT:
    """The checkpoint's encoder (or the same architecture at random init) with a new head.

    Args:
        model_id: a hub id or a ``save_pretrained`` folder.
        pretrained: load its weights; False: random initialization (the transfer baseline).

    Raises:
        ValueError: a weight of the encoder is missing from the checkpoint or has another shape.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_id)
    model_cls, _ = _classes(config.model_type)
    if pretrained:
        full, info = model_cls.from_pretrained(model_id, output_loading_info=True)
        missing = sorted(k for k in info["missing_keys"] if not k.startswith("classifier."))
        if missing or info["mismatched_keys"]:
            raise ValueError(
                f"{model_id}: encoder weights missing {missing}, of other shapes {sorted(info['mismatched_keys'])}"
            )
    else:
        full = model_cls(config)
    mean, std = image_statistics(model_id, config.model_type)
    encoder = getattr(full, full.base_model_prefix)
    return HFViT(encoder, num_classes, mean, std, model_cls.__name__)


def rebuild(description: dict[str, Any]) -> HFViT:
    """A random-initialized :class:`HFViT` of the architecture :meth:`HFViT.description` recorded."""
    import transformers

    config = transformers.AutoConfig.for_model(**description["config"])
    model_cls, _ = _classes(config.model_type)
    full = model_cls(config)
    cfg = description["pretrained_cfg"]
    return HFViT(
        getattr(full, full.base_model_prefix),
        description["num_classes"],
        cfg["mean"],
        cfg["std"],
        description["architecture"],
    )
