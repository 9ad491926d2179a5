"""Batched preprocessing on the training device: uint8 NHWC in, normalized float NCHW out.

The whole prepared dataset sits in memory as uint8. Resizing, augmentation and normalization run
on whole batches on the device that trains (one ``grid_sample`` per batch), never per image
through PIL, so the loader cannot become what limits training speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitpeft.config import AugmentConfig
from vitpeft.data.augment import BatchRandAugment, random_erasing
from vitpeft.device import host_to_device


class BatchPreprocessor:
    """Turn a uint8 ``(B, H, W, C)`` batch into the model's normalized ``(B, 3, S, S)`` input."""

    def __init__(self, img_size: int, mean, std, augment: AugmentConfig | None = None, num_classes: int = 0):
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # copied once per device
        self.augment = augment or AugmentConfig()
        a = self.augment
        self.randaugment = None
        if a.randaugment:
            self.randaugment = BatchRandAugment(a.randaugment_num_ops, a.randaugment_magnitude)
        self.mixer = mixer(a, num_classes)

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None):
        x = images.permute(0, 3, 1, 2)  # (B, C, H, W) uint8
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if train and self.randaugment is not None:
            x = self.randaugment(x, generator)  # each image its own ops, from the data generator
        x = x.float().div_(255.0)  # in [0, 1]
        size = (self.img_size, self.img_size)
        if train and self._augments():
            x = self._random_affine(x, generator)
        elif x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if x.device not in self._stats_on:
            self._stats_on[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._stats_on[x.device]
        x = (x - mean) / std
        if train and self.augment.erasing_prob > 0:
            # on normalized pixels, as timm's loader applies its RandomErasing
            x = random_erasing(x, self.augment.erasing_prob, generator)
        return x

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix on a preprocessed batch: mixed images and soft targets
        ``(B, num_classes)``. Without them (or when the batch is drawn unmixed), the batch and its
        integer labels pass through unchanged."""
        return (x, labels) if self.mixer is None else self.mixer(x, labels)

    def _augments(self) -> bool:
        a = self.augment
        return a.scale != (1.0, 1.0) or a.translate > 0 or a.hflip

    def _random_affine(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw each image's view (``AugmentConfig`` gives the meaning) and apply it with ``affine_views``."""
        b = x.shape[0]

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(b, *shape, generator=generator) * (high - low) + low

        area = uniform(*self.augment.scale)  # uniform in area, as RandomResizedCrop draws it
        flip = torch.zeros(b, dtype=torch.bool)
        if self.augment.hflip:
            flip = torch.rand(b, generator=generator) < 0.5
        shift = uniform(-self.augment.translate, self.augment.translate, 2)  # as RandomAffine, unrounded
        return affine_views(x, self.img_size, area.sqrt(), shift, flip)


def mixer(augment: AugmentConfig, num_classes: int):
    """torchvision's MixUp and CutMix as ``augment`` asks for them, or None when it mixes nothing.

    With both on, each mixed batch gets CutMix with probability ``cutmix_switch_prob``, else
    MixUp; a batch is mixed at all with probability ``mix_prob`` (timm's ``Mixup`` in its
    ``batch`` mode). Each draws from torch's global generator.
    """
    if not augment.mixes:
        return None
    if num_classes < 2:
        raise ValueError("mixup and cutmix need the number of classes")
    both = augment.mixup_alpha > 0 and augment.cutmix_alpha > 0
    choices = {}  # transform: its probability among mixed batches
    if augment.mixup_alpha > 0:
        mixup = v2.MixUp(alpha=augment.mixup_alpha, num_classes=num_classes)
        choices[mixup] = 1.0 - augment.cutmix_switch_prob if both else 1.0
    if augment.cutmix_alpha > 0:
        cutmix = v2.CutMix(alpha=augment.cutmix_alpha, num_classes=num_classes)
        choices[cutmix] = augment.cutmix_switch_prob if both else 1.0
    mix = v2.RandomChoice(list(choices), p=list(choices.values())) if both else next(iter(choices))
    # Always-on mixing draws no coin, so that it draws what MixUp alone always drew.
    return mix if augment.mix_prob == 1.0 else v2.RandomApply([mix], p=augment.mix_prob)


def affine_views(
    x: torch.Tensor, size: int, view: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Resample every image of a batch through its own square view, in one ``grid_sample``.

    Image ``i`` becomes what torchvision's ``v2.functional.affine(image, angle=0, scale=1 / view[i],
    translate=shift[i] * side, shear=0)`` gives after an optional ``horizontal_flip``, resized to
    ``size``: zoomed about its centre so that a square of ``view[i]`` times its side fills the
    output, then moved by ``shift[i]`` of the output's side. Outside the image is black.

    Args:
        x: float images ``(B, C, H, W)``.
        size: the output's side in pixels.
        view: ``(B,)`` side of the region shown, as a fraction of the image's side: below 1 a
            centred crop zoomed in (``resized_crop``), above 1 the image shrunk onto a black border.
        shift: ``(B, 2)`` how far the content moves right and down, as a fraction of the side.
        flip: ``(B,)`` bool, mirror the image left-right before the rest.

    Returns:
        ``(B, C, size, size)`` float images.
    """
    b = x.shape[0]
    mirror = torch.ones(b) if flip is None else 1.0 - 2.0 * flip.float()
    # theta maps output to input coordinates, both spanning [-1, 1] (2 units per side), so it undoes
    # the shift first (2 * shift), then the zoom (view), then the flip (mirror).
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = mirror * view
    theta[:, 1, 1] = view
    theta[:, 0, 2] = -2.0 * mirror * view * shift[:, 0]
    theta[:, 1, 2] = -2.0 * view * shift[:, 1]
    grid = F.affine_grid(host_to_device(theta, x.device), [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
