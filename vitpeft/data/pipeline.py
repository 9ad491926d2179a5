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


class BatchPreprocessor:
    """Turn a uint8 ``(B, H, W, C)`` batch into the model's normalized ``(B, 3, S, S)`` input."""

    def __init__(self, img_size: int, mean, std, augment: AugmentConfig | None = None, num_classes: int = 0):
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.augment = augment or AugmentConfig()
        self.randaugment = v2.RandAugment() if self.augment.randaugment else None
        self.mixup = None
        if self.augment.mixup_alpha > 0:
            if num_classes < 2:
                raise ValueError("mixup needs the number of classes")
            self.mixup = v2.MixUp(alpha=self.augment.mixup_alpha, num_classes=num_classes)

    def __call__(self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None):
        x = images.permute(0, 3, 1, 2)  # (B, C, H, W) uint8
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if train and self.randaugment is not None:
            # RandAugment draws one op sequence per call, so call it per image (global torch RNG).
            x = torch.stack([self.randaugment(image) for image in x])
        x = x.float().div_(255.0)  # in [0, 1]
        size = (self.img_size, self.img_size)
        if train and self._augments():
            x = self._random_affine(x, generator)
        elif x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp on a preprocessed batch: mixed images and soft targets ``(B, num_classes)``.
        Without mixup, the batch and its integer labels pass through unchanged."""
        return (x, labels) if self.mixup is None else self.mixup(x, labels)

    def _augments(self) -> bool:
        a = self.augment
        return a.scale != (1.0, 1.0) or a.translate > 0 or a.hflip

    def _random_affine(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(b, generator=generator) * (high - low) + low

        # theta maps output coordinates to input coordinates, so a zoom-in of s divides by s.
        zoom = 1.0 / uniform(*self.augment.scale)
        flip = torch.ones(b)
        if self.augment.hflip:
            flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        t = self.augment.translate * 2.0  # grid coordinates span [-1, 1]
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = zoom * flip
        theta[:, 1, 1] = zoom
        theta[:, 0, 2] = uniform(-t / 2, t / 2)
        theta[:, 1, 2] = uniform(-t / 2, t / 2)
        theta = theta.to(x.device)
        grid = F.affine_grid(theta, [b, 3, self.img_size, self.img_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
