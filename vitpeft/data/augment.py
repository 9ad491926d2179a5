"""RandAugment and random erasing on whole batches, with each image's own random choices.

torchvision's ``RandAugment`` and timm's ``RandomErasing`` draw per image and run per image: a
batch of 128 issues 128 times the tensor ops (on a GPU, kernel launches) of one image. Here each
image still draws its own ops, signs and box, but a batch is transformed per group of images that
drew the same thing, so the ops issued per batch do not grow with the batch size.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

from vitpeft.device import host_to_device


class BatchRandAugment:
    """torchvision's ``v2.RandAugment`` on a ``(B, C, H, W)`` batch, each image its own ops.

    In each of ``num_ops`` rounds every image draws an op uniformly from torchvision's op space
    (Identity included) and, for a signed op, a negative magnitude with probability 0.5, as
    ``v2.RandAugment`` draws them for one image. The round then applies each (op, sign) to the
    images that drew it, in one call of torchvision's own op (its
    ``_apply_image_or_video_transform``), so every image gets exactly what torchvision would give
    it. Every group is applied even when no image drew it: the ops issued per batch are then the
    same for any batch size (up to torchvision skipping some work on an empty group).

    Args:
        num_ops: ops per image (torchvision's ``num_ops``).
        magnitude: the fixed magnitude bin of every op, 0 to ``num_magnitude_bins - 1``.
        num_magnitude_bins: torchvision's number of bins.
    """

    def __init__(self, num_ops: int, magnitude: int, num_magnitude_bins: int = 31):
        self.reference = v2.RandAugment(num_ops, magnitude, num_magnitude_bins)
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.op_names = list(self.reference._AUGMENTATION_SPACE)
        self.signed = torch.tensor([signed for _, signed in self.reference._AUGMENTATION_SPACE.values()])

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, *self.draw(images.shape[0], generator))

    def draw(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's ops: ``(num_ops, B)`` indices into ``op_names``, and ``(num_ops, B)`` bool,
        True where the magnitude is negated (only ever for a signed op)."""
        ops = torch.randint(len(self.op_names), (self.num_ops, batch_size), generator=generator)
        negated = torch.rand(self.num_ops, batch_size, generator=generator) <= 0.5
        return ops, negated & self.signed[ops]

    def apply(self, images: torch.Tensor, ops: torch.Tensor, negated: torch.Tensor) -> torch.Tensor:
        """Apply drawn ops (as ``draw`` returns them) to ``images``, round after round."""
        height, width = images.shape[-2:]
        groups = self._groups(height, width)
        for round_ops, round_negated in zip(ops, negated, strict=True):
            out = images.clone()  # Identity's images stay as they are
            for index, negate, name, magnitude in groups:
                chosen = ((round_ops == index) & (round_negated == negate)).nonzero().squeeze(1)
                chosen = host_to_device(chosen, images.device)
                transformed = self.reference._apply_image_or_video_transform(
                    images.index_select(0, chosen),
                    name,
                    magnitude,
                    interpolation=self.reference.interpolation,
                    fill=self.reference._fill,
                )
                out.index_copy_(0, chosen, transformed)
            images = out
        return images

    def _groups(self, height: int, width: int) -> list[tuple[int, bool, str, float]]:
        """(op index, negated, op name, signed magnitude) of every group but Identity's."""
        groups = []
        for index, (name, (magnitudes_of, signed)) in enumerate(self.reference._AUGMENTATION_SPACE.items()):
            if name == "Identity":
                continue
            magnitudes = magnitudes_of(self.num_magnitude_bins, height, width)
            magnitude = 0.0 if magnitudes is None else float(magnitudes[self.magnitude])
            groups.append((index, False, name, magnitude))
            if signed:
                groups.append((index, True, name, magnitude * -1))  # as torchvision negates it
        return groups


def random_erasing(
    x: torch.Tensor,
    probability: float,
    generator: torch.Generator | None = None,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int = 10,
) -> torch.Tensor:
    """timm's ``RandomErasing(probability, mode="pixel")`` on a batch, without a loop over it.

    As timm draws them per image: with ``probability`` an image gets one box, of area a fraction
    uniform in ``[min_area, max_area]`` and aspect ratio (height / width) log-uniform in
    ``[min_aspect, 1 / min_aspect]``, sides rounded to pixels; the first of ``attempts`` draws that
    fits strictly inside the image is used, and if none fits the image stays as it is. The box's
    top-left corner is uniform over the places it fits, and its pixels become standard normal
    noise. Here all attempts of all images are drawn at once (from ``generator``), and the boxes
    become one mask of the erased images.

    Args:
        x: normalized float images ``(B, C, H, W)``.
        probability: the chance an image gets a box (timm's ``probability``, DeiT's ``reprob``).
        generator: the boxes' generator; the noise comes from the default generator of ``x``'s
            device, so that it is drawn where it is used.

    Returns:
        A new ``(B, C, H, W)`` tensor; ``x`` is left unchanged.
    """
    b, _, height, width = x.shape

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64) * (high - low) + low

    erased = torch.rand(b, generator=generator, dtype=torch.float64) <= probability
    area = uniform(min_area, max_area, b, attempts) * (height * width)
    aspect = uniform(math.log(min_aspect), -math.log(min_aspect), b, attempts).exp()
    box_h = (area * aspect).sqrt().round().long()  # round half to even, as Python's round
    box_w = (area / aspect).sqrt().round().long()
    fits = (box_h < height) & (box_w < width)
    first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits, where timm stops
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    erased &= fits.any(1)
    # random.randint(0, side - box) for both corners: uniform over the side - box + 1 places
    top = (uniform(0.0, 1.0, b) * (height - box_h + 1)).floor().long()
    left = (uniform(0.0, 1.0, b) * (width - box_w + 1)).floor().long()
    # Only the erased images get noise: a quarter of the batch at DeiT's 0.25.
    chosen = erased.nonzero().squeeze(1)
    boxes = host_to_device(torch.stack([top, left, box_h, box_w])[:, chosen], x.device)
    top, left, box_h, box_w = boxes.view(4, -1, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)  # (n, H, W)
    chosen = host_to_device(chosen, x.device)
    images = x.index_select(0, chosen)
    return x.index_copy(0, chosen, torch.where(inside.unsqueeze(1), torch.randn_like(images), images))
