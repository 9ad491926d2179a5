"""One look for every figure and table: display names and a colour per method family.

The palette is Okabe and Ito's (2008), which stays distinguishable under common colour-vision
deficiencies; a method keeps its colour in every figure.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window
import matplotlib.pyplot as plt  # noqa: E402

from vitpeft.io import atomic_path  # noqa: E402
from vitpeft.methods import parse_method_name  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
FAMILY_COLOURS = {
    "full": OKABE_ITO[0],
    "linear": OKABE_ITO[1],
    "lora": OKABE_ITO[2],
    "qlora": OKABE_ITO[3],
    "adalora": OKABE_ITO[5],
    "qalora": OKABE_ITO[4],
    "scratch": OKABE_ITO[7],
}
FAMILY_MARKERS = {
    "full": "s",
    "linear": "v",
    "lora": "o",
    "qlora": "D",
    "adalora": "^",
    "qalora": "P",
    "scratch": "x",
}
FAMILY_LABELS = {
    "full": "Full fine-tuning",
    "linear": "Linear probe",
    "scratch": "From scratch (full)",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "adalora": "AdaLoRA",
    "qalora": "QA-LoRA",
}
FAMILY_ORDER = ["scratch", "full", "linear", "lora", "qlora", "adalora", "qalora"]


def method_family(method: str) -> str:
    return parse_method_name(method)[0]


def method_colour(method: str) -> str:
    return FAMILY_COLOURS.get(method_family(method), OKABE_ITO[-2])


def method_label(method: str, latex: bool = False) -> str:
    """Human name: ``lora_r8`` -> ``LoRA r=8`` (or ``LoRA ($r{=}8$)`` for LaTeX); ``qlora4_r8`` ->
    ``QLoRA 4-bit r=8``."""
    family, fields = parse_method_name(method)
    label = FAMILY_LABELS.get(family, method)
    if "bits" in fields:
        label += f" {fields['bits']}-bit"
    if "r" in fields:
        label += f" ($r{{=}}{fields['r']}$)" if latex else f" r={fields['r']}"
    return label


def method_sort_key(method: str) -> tuple:
    family, fields = parse_method_name(method)
    rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
    return (rank, -fields.get("bits", 0), fields.get("r", 0), method)


def apply_style() -> None:
    plt.rcParams.update(
        {
            "figure.figsize": (4.5, 3.0),
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "savefig.bbox": "tight",
            "pdf.fonttype": 42,
        }
    )


NUMBER_WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]


def macro_name(*parts: str) -> str:
    """A LaTeX-safe command name: ``("lora_r8", "digits", "top1")`` -> ``LoraREightDigitsTopOne``."""
    words = []
    for token in re.split(r"[^A-Za-z0-9]+", "_".join(parts)):
        for piece in re.findall(r"[A-Za-z]+|\d", token):
            words.append(NUMBER_WORDS[int(piece)] if piece.isdigit() else piece.capitalize())
    return "".join(words)


def save(fig, out_pdf: str | Path | None):
    """Write a figure as a vector PDF, atomically, and free it; without a path, return it (notebooks)."""
    if out_pdf is None:
        return fig
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    plt.close(fig)
    return None


def placeholder(message: str, out_pdf: str | Path) -> None:
    """A small figure that only states ``message``: the study has nothing to plot here."""
    apply_style()
    fig, ax = plt.subplots(figsize=(4.5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    save(fig, out_pdf)
