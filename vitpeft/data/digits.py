"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no network."""

from __future__ import annotations

import numpy as np


def build_digits() -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Return uint8 images ``(1797, 8, 8, 1)``, labels, class names and a source record."""
    from sklearn.datasets import load_digits  # lazily, as in arrays.stratified_holdout

    bunch = load_digits()
    # The 8x8 images hold counts 0..16 of set pixels in 4x4 blocks; spread them over uint8.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    source = {"name": "sklearn.datasets.load_digits", "origin": "UCI ML hand-written digits"}
    return images, labels, [str(c) for c in range(10)], source
