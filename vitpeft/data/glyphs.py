"""A source set of printed characters rendered like scikit-learn's handwritten digits.

No pretrained ViT weights can be fetched offline, so the demo pretrains its backbone on images
drawn here from a seed: digits and letters from the fonts that matplotlib ships (DejaVu, STIX,
Computer Modern; regular, bold, italic, mono, serif), each drawn with a random affine jitter
(size, aspect, rotation, shear, position) and stroke width. The images are made the way the UCI
digits were (Alpaydin and Kaynak, 1998): a binary 32x32 bitmap, then the count of set pixels in
each 4x4 block (0..16), here spread over uint8 like :func:`vitpeft.data.digits.build_digits`.
Deterministic for one seed and one matplotlib version (the fonts are matplotlib's files).
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

DEFAULT_CHARACTERS = string.digits + string.ascii_uppercase
# Text faces among matplotlib's fonts (its others are symbol and math-extension faces).
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)
BLOCK = 4  # pixels per side of the blocks counted into one image pixel, as in the UCI digits
RENDER_PX = 64  # glyphs are rendered once at this size, then resampled by each draw's affine map


def _render(font_file: Path, character: str) -> np.ndarray:
    """One glyph as a float bitmap in [0, 1], cropped to its ink."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(font_file))
    font.set_size(RENDER_PX, 72)  # points at 72 dpi: pixels
    font.set_text(character, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    bitmap = np.asarray(font.get_image(), dtype=np.float64) / 255.0
    rows, cols = np.nonzero(bitmap > 0.5)
    return bitmap[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _draw(glyph: np.ndarray, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Place ``glyph`` on a binary ``canvas`` x ``canvas`` bitmap under a random affine map."""
    from scipy import ndimage

    height = rng.uniform(0.7, 0.95) * canvas
    scale_y = height / glyph.shape[0]
    scale_x = scale_y * rng.uniform(0.75, 1.25)
    angle, shear = np.deg2rad(rng.uniform(-12.0, 12.0)), rng.uniform(-0.25, 0.25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # (row, col) coordinates: the forward map scales, shears columns by rows, then rotates.
    forward = rotation @ np.array([[1.0, 0.0], [shear, 1.0]]) @ np.diag([scale_y, scale_x])
    inverse = np.linalg.inv(forward)
    centre_out = canvas / 2 - 0.5 + rng.uniform(-0.08, 0.08, size=2) * canvas
    centre_in = (np.array(glyph.shape) - 1) / 2
    placed = ndimage.affine_transform(
        glyph, inverse, offset=centre_in - inverse @ centre_out, output_shape=(canvas, canvas), order=1
    )
    ink = placed > 0.5
    thicken = rng.integers(1, 3)  # 1 or 2 pixels more stroke on each side: pen widths vary
    if thicken:
        ink = ndimage.binary_dilation(ink, iterations=int(thicken))
    return ink


def build_glyphs(
    num_images: int, image_size: int, seed: int, characters: str = DEFAULT_CHARACTERS
) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Return uint8 images ``(N, S, S, 1)`` with balanced labels, class names and a source record.

    Args:
        num_images: images to draw, spread evenly over the characters.
        image_size: side of each image; drawn on a ``4 * image_size`` bitmap, then block-counted.
        seed: seed of every random choice (character order, font, affine map, stroke width).
        characters: the classes, one character each; every font must have a glyph for each.
    """
    import matplotlib

    if len(set(characters)) != len(characters) or not characters:
        raise ValueError(f"characters must be distinct and non-empty, got {characters!r}")
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    glyphs = [[_render(font_dir / name, c) for c in characters] for name in FONT_FILES]
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images) % len(characters)
    rng.shuffle(labels)
    canvas = BLOCK * image_size
    images = np.empty((num_images, image_size, image_size, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        ink = _draw(glyphs[rng.integers(len(FONT_FILES))][label], canvas, rng)
        counts = ink.reshape(image_size, BLOCK, image_size, BLOCK).sum(axis=(1, 3))
        images[i, ..., 0] = np.round(counts * (255.0 / BLOCK**2))
    source = {
        "name": "vitpeft.data.glyphs",
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "characters": characters,
        "fonts": list(FONT_FILES),
        "matplotlib": matplotlib.__version__,
    }
    return images, labels.astype(np.int64), list(characters), source
