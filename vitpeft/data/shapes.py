"""A procedurally generated source set of strokes, shapes and textures for backbone pretraining.

No pretrained ViT weights can be fetched offline, so the demo pretrains its backbone on images
drawn here from a seed. The classes are stroke primitives (bars, diagonals, rings, arcs, crosses,
corners ...) at random position, size, thickness and contrast over a random texture, which is
what a small handwriting set such as the digits is built from. Deterministic for one seed.
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = (
    "horizontal_bar",
    "vertical_bar",
    "diagonal",
    "anti_diagonal",
    "ring",
    "disk",
    "square_outline",
    "plus",
    "cross",
    "corner",
    "upper_arc",
    "lower_arc",
    "left_arc",
    "right_arc",
    "two_bars",
    "triangle",
)


def _segment_distance(x, y, x0, y0, x1, y1):
    """Distance from every pixel to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _stroke_distance(kind: str, x, y, cx, cy, r):
    """Distance from every pixel to the stroke of one shape class centred at (cx, cy)."""
    seg = _segment_distance
    if kind == "horizontal_bar":
        return seg(x, y, cx - r, cy, cx + r, cy)
    if kind == "vertical_bar":
        return seg(x, y, cx, cy - r, cx, cy + r)
    if kind == "diagonal":
        return seg(x, y, cx - r, cy - r, cx + r, cy + r)
    if kind == "anti_diagonal":
        return seg(x, y, cx - r, cy + r, cx + r, cy - r)
    if kind in ("ring", "upper_arc", "lower_arc", "left_arc", "right_arc"):
        ring = np.abs(np.hypot(x - cx, y - cy) - r)
        keep = {
            "ring": np.ones_like(x, dtype=bool),
            "upper_arc": y <= cy,
            "lower_arc": y >= cy,
            "left_arc": x <= cx,
            "right_arc": x >= cx,
        }[kind]
        return np.where(keep, ring, np.inf)
    if kind == "disk":
        return np.maximum(np.hypot(x - cx, y - cy) - r, 0.0)
    if kind == "square_outline":
        return np.abs(np.maximum(np.abs(x - cx), np.abs(y - cy)) - r)
    if kind == "plus":
        return np.minimum(seg(x, y, cx - r, cy, cx + r, cy), seg(x, y, cx, cy - r, cx, cy + r))
    if kind == "cross":
        return np.minimum(
            seg(x, y, cx - r, cy - r, cx + r, cy + r), seg(x, y, cx - r, cy + r, cx + r, cy - r)
        )
    if kind == "corner":
        return np.minimum(
            seg(x, y, cx - r, cy - r, cx - r, cy + r), seg(x, y, cx - r, cy + r, cx + r, cy + r)
        )
    if kind == "two_bars":
        return np.minimum(
            seg(x, y, cx - r, cy - r / 2, cx + r, cy - r / 2),
            seg(x, y, cx - r, cy + r / 2, cx + r, cy + r / 2),
        )
    if kind == "triangle":
        a, b, c = (cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)
        return np.minimum.reduce([seg(x, y, *a, *b), seg(x, y, *b, *c), seg(x, y, *c, *a)])
    raise ValueError(f"unknown shape class {kind!r}")


def _texture(rng: np.random.Generator, x, y) -> np.ndarray:
    """A low-contrast background: a random oriented grating plus pixel noise."""
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.2, 1.2), rng.uniform(0, 2 * np.pi)
    grating = np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    return rng.uniform(0.0, 0.25) * grating + rng.normal(0.0, 0.05, size=x.shape)


def build_shapes(
    num_images: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Return uint8 images ``(N, S, S, 1)`` with balanced labels, class names and a source record."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    labels = np.arange(num_images) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    images = np.empty((num_images, image_size, image_size, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        r = rng.uniform(0.2, 0.4) * image_size
        cx, cy = rng.uniform(r, image_size - r, size=2)
        width = rng.uniform(0.6, 1.6) * image_size / 16
        stroke = np.exp(-0.5 * (_stroke_distance(SHAPE_CLASSES[label], x, y, cx, cy, r) / width) ** 2)
        picture = rng.uniform(0.6, 1.0) * stroke + _texture(rng, x, y)
        images[i, ..., 0] = np.round(np.clip(picture, 0.0, 1.0) * 255)
    source = {"name": "vitpeft.data.shapes", "num_images": num_images, "image_size": image_size, "seed": seed}
    return images, labels.astype(np.int64), list(SHAPE_CLASSES), source
