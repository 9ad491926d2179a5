"""Published numbers beside the study's: the ``published.tex`` table.

Every value below was read from its source (see each record's ``where``) and is cited from
``paper/refs.bib``; none is derived. A record names the study cell it compares with; the table
lines that cell up only when the study has it, and says in a column how the published setting
differs. A study that shares no data set with the records (the offline demo) lines up only the
records tied to no data set and says that the others are not comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vitpeft.analysis.tables import render
from vitpeft.analysis.vtab import vtab_table


@dataclass(frozen=True)
class PublishedResult:
    """One published number and the study cell it sits beside.

    Attributes:
        citation: key in ``paper/refs.bib``.
        where: the table or file the value was read from (printed under the citation).
        setting: what was measured, in the source's words (LaTeX).
        value: the published number (test top-1 in %, or points for a ``baseline`` difference).
        differs: how the source's model, data or protocol differ from the study's (LaTeX).
        dataset, model, method: the study cell beside it; ``model`` None: every model of the study.
        baseline: set for a difference (``method`` minus ``baseline``, points), not an accuracy.
    """

    citation: str
    where: str
    setting: str
    value: float
    differs: str
    dataset: str | None
    model: str | None
    method: str
    baseline: str | None = None


DEIT_PROTOCOL = "fine-tuned with the protocol of \\citet{touvron2021deit}; no interval reported"
PUBLISHED = (
    PublishedResult(
        "caron2021dino",
        "Table 6",
        "ViT-S/16 supervised on ImageNet (DeiT-S), fine-tuned on CIFAR-10",
        99.0,
        DEIT_PROTOCOL,
        "cifar10",
        "deit_small",
        "full",
    ),
    PublishedResult(
        "caron2021dino",
        "Table 6",
        "ViT-S/16 supervised on ImageNet (DeiT-S), fine-tuned on CIFAR-100",
        89.5,
        DEIT_PROTOCOL,
        "cifar100",
        "deit_small",
        "full",
    ),
    PublishedResult(
        "caron2021dino",
        "Table 6",
        "ViT-S/16 pretrained by DINO, fine-tuned on CIFAR-10",
        99.0,
        "self-supervised (DINO) pretraining, not DeiT's weights; " + DEIT_PROTOCOL,
        "cifar10",
        "deit_small",
        "full",
    ),
    PublishedResult(
        "caron2021dino",
        "Table 6",
        "ViT-S/16 pretrained by DINO, fine-tuned on CIFAR-100",
        90.5,
        "self-supervised (DINO) pretraining, not DeiT's weights; " + DEIT_PROTOCOL,
        "cifar100",
        "deit_small",
        "full",
    ),
    PublishedResult(
        "mai2024lessons",
        # github.com/OSU-MLB/PETL_Vision: tune_output/cifar100_tune_lrwd/cifar100/full/lora_8/final_summary.csv
        "its repository's final run",
        "LoRA ($r{=}8$) on the full CIFAR-100",
        92.43,
        "ViT-B/16 pretrained on ImageNet-21k; 40 epochs at batch 64, learning rate and weight decay "
        "tuned per method; one run",
        "cifar100",
        "vit_small",
        "lora_r8",
    ),
    PublishedResult(
        "mai2024lessons",
        # the same repository: tune_output/cifar100_tune_lrwd/cifar100/full/full/final_summary.csv
        "its repository's final run",
        "Full fine-tuning on the full CIFAR-100",
        87.48,
        "as the row above",
        "cifar100",
        "vit_small",
        "full",
    ),
    PublishedResult(
        "dettmers2023qlora",
        "Table 4",
        "NF4 with double quantization minus BFloat16 adapters: mean 5-shot MMLU over LLaMA 7B--65B "
        "(53.1 against 53.0)",
        0.1,
        "language models on MMLU, not ViTs on images; our 4-bit base is NF4 without double "
        "quantization, against an fp32 base",
        None,
        None,
        "qlora4_r8",
        "lora_r8",
    ),
)


def lined_up(result: PublishedResult, cells: pd.DataFrame, compared: pd.DataFrame) -> dict[str, Any] | None:
    """The study's number beside ``result``: a cell's mean test top-1 with its 95% half-interval,
    or for a difference the paired difference (one cell: with its interval; several: the range of
    the cells' means). None when the study lacks the cell."""
    if result.baseline is None:
        match = cells[
            (cells.dataset == result.dataset)
            & (cells.model == result.model)
            & (cells.method == result.method)
        ]
        if match.empty:
            return None
        row = match.iloc[0]
        return {"value": row.test_top1_mean, "half": row.test_top1_ci_high - row.test_top1_mean, "n": 1}
    found = compared[(compared.method == result.method) & (compared.baseline == result.baseline)]
    if result.dataset is not None:
        found = found[found.dataset == result.dataset]
    if result.model is not None:
        found = found[found.model == result.model]
    if found.empty:
        return None
    if len(found) == 1:
        row = found.iloc[0]
        return {"value": row.diff_mean, "half": row.diff_ci_high - row.diff_mean, "n": 1}
    return {"low": found.diff_mean.min(), "high": found.diff_mean.max(), "n": len(found)}


def published_rows(
    cells: pd.DataFrame, compared: pd.DataFrame, records=PUBLISHED
) -> tuple[list[dict[str, Any]], bool]:
    """The table's rows, and whether the study is comparable at all: it shares a data set with
    the records. An incomparable study lines up none of the cells of a data set; a record tied to
    no data set (QLoRA's difference on language models) is lined up either way."""
    comparable = bool(set(cells.dataset) & {r.dataset for r in records if r.dataset})
    rows = []
    for r in records:
        ours = lined_up(r, cells, compared) if comparable or r.dataset is None else None
        if ours and "half" in ours and math.isnan(ours["half"]):
            ours["half"] = None  # one seed: no interval
        rows.append({**r.__dict__, "ours": ours})
    return rows, comparable


def write_published(
    cell_stats_csv, comparisons_csv, out_tex, vtab_tasks: dict[str, str] | None = None
) -> None:
    """The published rule: ``published.tex`` from the cell statistics and the comparisons; for a
    study of VTAB-1k tasks (``vtab_tasks``: dataset name -> task) also the VTAB-1k table."""
    cells = pd.read_csv(cell_stats_csv)
    rows, comparable = published_rows(cells, pd.read_csv(comparisons_csv))
    render(
        "published.tex.j2",
        Path(out_tex),
        rows=rows,
        comparable=comparable,
        datasets=sorted(cells.dataset.unique()),
        models=sorted(cells.model.unique()),
        vtab=vtab_table(cells, vtab_tasks or {}),
    )
