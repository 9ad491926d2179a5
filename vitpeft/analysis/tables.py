"""LaTeX parts of the paper, rendered with jinja2 from the pipeline's tables: the results table,
the per-run appendix table, the setup section and a macros file of named numbers.

Nothing in the paper is typed by hand: the prose quotes macros such as ``\\FullDigitsDeitTinyTopOne``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from vitpeft.analysis.aggregate import baselines_table
from vitpeft.analysis.style import macro_name, method_family, method_label, method_sort_key
from vitpeft.baselines import BASELINE_LABELS, BASELINE_NAMES
from vitpeft.config import ExportConfig, model_spec, training_recipe
from vitpeft.convergence import ConvergenceCriterion
from vitpeft.device import NAMES as DEVICE_NAMES
from vitpeft.io import atomic_write, read_json
from vitpeft.methods import parse_method_name
from vitpeft.tune import rate_family

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SIGNIFICANCE = 0.05  # Holm-corrected p below which a difference is marked in the tables
# The marks of the results table: a difference from this reference survives Holm correction.
REFERENCE_MARKS = {"full": r"\dagger", "lora_r8": r"\ddagger"}
RANK_REFERENCE = "lora_r8"  # the rank and bits ablations are read against LoRA at r = 8, fp32 base
# Where each dataset kind comes from, for the setup section (keys of paper/refs.bib).
DATASET_CITATIONS = {
    "cifar10": "krizhevsky2009cifar",
    "cifar100": "krizhevsky2009cifar",
    "tinyimagenet": "le2015tinyimagenet",
    "vtab1k": "zhai2019vtab",
}


def tex_escape(text: Any) -> str:
    specials = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}"}
    return "".join(specials.get(ch, ch) for ch in str(text))


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: a mean of -1e-15 prints as 0.0, not -0.0


def fmt_count(value: float) -> str:
    return f"{int(round(value)):,}".replace(",", "{,}")


def fmt_mib(value: float) -> str:
    return "--" if value is None or math.isnan(value) else f"{value / 2**20:.2f}"


def fmt_general(value: float) -> str:
    """Three significant digits, a power of ten in LaTeX where needed: 22.7, 2.04\\ensuremath{\\times 10^{19}}."""
    mantissa, _, exponent = f"{value:.3g}".partition("e")
    return rf"{mantissa}\ensuremath{{\times 10^{{{int(exponent)}}}}}" if exponent else mantissa


def compute_used(
    runs: pd.DataFrame,
    backbones: list[dict[str, Any]],
    estimate: dict[str, Any],
    lr_choices: list[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Device-hours that the reported training runs took (tuning runs included), and, once every
    run of the estimate has reported, the FLOP/s they sustained (the estimated FLOPs over the
    measured time of those runs: the estimate counts each tuning grid, not its extensions)."""
    grid_seconds, extension_seconds, grid_runs = 0.0, 0.0, 0
    for choice in lr_choices:
        extended = {extension["lr"] for extension in choice.get("extensions", [])}
        for entry in choice["grid"]:
            if entry["lr"] in extended:
                extension_seconds += entry.get("train_time_s", 0.0)
            else:
                grid_seconds += entry.get("train_time_s", 0.0)
                grid_runs += 1
    estimated_seconds = (
        float(runs.train_time_s.sum()) + sum(b["train_time_s"] for b in backbones) + grid_seconds
    )
    complete = len(runs) + len(backbones) + grid_runs == estimate["runs"] and estimated_seconds > 0
    return {
        "hours": (estimated_seconds + extension_seconds) / 3600.0,
        "tflops": estimate["flops"] / estimated_seconds / 1e12 if complete else None,
    }


def environment() -> jinja2.Environment:
    # LaTeX is full of braces and percent signs, so the templates use << >> and <% %> instead.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        block_start_string="<%",
        block_end_string="%>",
        variable_start_string="<<",
        variable_end_string=">>",
        comment_start_string="<#",
        comment_end_string="#>",
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters.update(
        mib=fmt_mib,
        tex=tex_escape,
        fmt=fmt,
        count=fmt_count,
        general=fmt_general,
        method=lambda m: method_label(m, latex=True),
    )
    return env


def render(template: str, out_path: str | Path, **context: Any) -> str:
    text = environment().get_template(template).render(**context)
    with atomic_write(out_path) as handle:
        handle.write(text)
    return text


def ci_half(row: pd.Series | dict, metric: str = "test_top1") -> float:
    return row[f"{metric}_ci_high"] - row[f"{metric}_mean"]


def significance_marks(compared: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """LaTeX superscripts per (dataset, model, method): the mark of each reference in
    ``REFERENCE_MARKS`` (in that order) whose paired difference from the method survives Holm
    correction. Two references are tested against each other once (``stats.comparisons``), and
    that test marks both of them."""
    significant = compared[compared.p_holm < SIGNIFICANCE]
    differs = {}  # (dataset, model, method) -> the references it differs from
    for r in significant.itertuples():
        for method, other in ((r.method, r.baseline), (r.baseline, r.method)):
            if other in REFERENCE_MARKS:
                differs.setdefault((r.dataset, r.model, method), set()).add(other)
    return {
        key: "".join(mark for ref, mark in REFERENCE_MARKS.items() if ref in refs)
        for key, refs in differs.items()
    }


def baseline_rows(baselines: pd.DataFrame | None, dataset: str) -> list[dict]:
    """The classical baselines fit on ``dataset``, in :data:`BASELINE_NAMES` order."""
    if baselines is None or baselines.empty:
        return []
    on_dataset = baselines[baselines.dataset == dataset]
    return sorted(on_dataset.to_dict("records"), key=lambda b: BASELINE_NAMES.index(b["baseline"]))


def result_groups(
    cells: pd.DataFrame,
    marks: dict[tuple[str, str, str], str] | None = None,
    baselines: pd.DataFrame | None = None,
) -> list[dict]:
    """The results table's blocks: one per dataset x model, methods in a fixed order, best in bold,
    with the significance ``marks`` of each method, and the classical ``baselines`` fit on the
    block's dataset (reference rows, not ViT methods: never in bold)."""
    groups = []
    for (dataset, model), group in cells.groupby(["dataset", "model"], sort=True):
        best = group["test_top1_mean"].max()
        rows = [
            {
                **row,
                "ci": ci_half(row),
                "best": row["test_top1_mean"] == best,
                "mark": (marks or {}).get((dataset, model, row["method"]), ""),
            }
            for _, row in sorted(group.iterrows(), key=lambda item: method_sort_key(item[1]["method"]))
        ]
        groups.append(
            {"dataset": dataset, "model": model, "rows": rows, "baselines": baseline_rows(baselines, dataset)}
        )
    return groups


def standings(cells: pd.DataFrame, baselines: pd.DataFrame) -> list[dict[str, Any]]:
    """Where the ViT methods stand against the classical baselines, per dataset x model: the best
    method, the best and the weakest baseline, and the methods (mean test top-1) above the best
    baseline, between the two, and below the weakest."""
    out = []
    for group in result_groups(cells, baselines=baselines):
        if not group["baselines"]:
            continue
        rows = sorted(group["rows"], key=lambda r: -r["test_top1_mean"])
        best = max(group["baselines"], key=lambda b: b["test_top1"])
        weakest = min(group["baselines"], key=lambda b: b["test_top1"])
        out.append(
            {
                "dataset": group["dataset"],
                "model": group["model"],
                "best_method": rows[0],
                "best_baseline": best,
                "weakest_baseline": weakest,
                "baselines": group["baselines"],
                "above": [r["method"] for r in rows if r["test_top1_mean"] > best["test_top1"]],
                "between": [
                    r["method"]
                    for r in rows
                    if weakest["test_top1"] <= r["test_top1_mean"] <= best["test_top1"]
                ],
                "below": [r["method"] for r in rows if r["test_top1_mean"] < weakest["test_top1"]],
            }
        )
    return out


def ablation_groups(cells: pd.DataFrame, compared: pd.DataFrame) -> list[dict[str, Any]]:
    """Per dataset x model, the two ablations read against ``RANK_REFERENCE`` (LoRA, r = 8):

    ``ranks``: every plain LoRA rank; ``bits``: LoRA, QLoRA and QA-LoRA at the reference's rank,
    i.e. the same adapter over an fp32, 8-bit or 4-bit base. Each row carries its paired difference
    from the reference (Holm-corrected within the reference's family of comparisons). An ablation
    with a single row has nothing to compare and is left empty.
    """
    reference_rank = parse_method_name(RANK_REFERENCE)[1]["r"]
    versus = compared[compared.baseline == RANK_REFERENCE].set_index(["dataset", "model", "method"])
    groups = []
    for (dataset, model), group in cells.groupby(["dataset", "model"], sort=True):
        rows = []
        for _, row in sorted(group.iterrows(), key=lambda item: method_sort_key(item[1]["method"])):
            family, fields = parse_method_name(row["method"])
            key = (dataset, model, row["method"])
            diff = versus.loc[key].to_dict() if key in versus.index else {}
            rows.append({**row, "family": family, **fields, "ci": ci_half(row), "diff": diff})
        ranks = [r for r in rows if r["family"] == "lora"]
        bits = [
            r for r in rows if r["family"] in ("lora", "qlora", "qalora") and r.get("r") == reference_rank
        ]
        if not any(r["method"] == RANK_REFERENCE for r in bits):
            bits = []  # nothing to read the quantized bases against
        # Every quantized method records the fp32 size of the same base layers; LoRA's base is that.
        fp32 = group["base_linear_bytes_fp32"].dropna()
        for r in bits:
            r["base_bytes"] = r["base_linear_bytes_quantized"] if r["family"] != "lora" else fp32.max()
        groups.append(
            {
                "dataset": dataset,
                "model": model,
                "ranks": ranks if len(ranks) > 1 else [],
                "bits": bits if len(bits) > 1 else [],
            }
        )
    return groups


# What the training-memory axis measured, by the runs' device (vitpeft.memory): CUDA counts the
# tensors PyTorch allocated; every other device, the resident set of the whole process.
MEMORY_MEASURES = {
    "cuda": "on a CUDA GPU, the peak memory allocated to PyTorch's tensors",
    "process": (
        "on the CPU, the peak resident set size of the whole training process, in which the Python "
        "and PyTorch libraries outweigh the model and its optimizer state at this scale, so small "
        "differences between methods say little"
    ),
}


def memory_measure(runs: pd.DataFrame) -> str:
    """How the runs' training memory was measured, for the Pareto figure's caption: by the
    devices they trained on (both measures where the study mixed them; none where no run
    recorded its device)."""
    devices = runs["device"].dropna().astype(str) if "device" in runs else pd.Series(dtype=str)
    kinds = sorted({"cuda" if d.startswith("cuda") else "process" for d in devices})
    return "; ".join(MEMORY_MEASURES[k] for k in kinds) or "as the run's device reported it"


def limitations(config: dict[str, Any]) -> dict[str, Any]:
    """What the limitations section says of the selected study, from its config: its name, size
    and whether its backbones were pretrained here (on the study's own source data) or elsewhere."""
    study = config["studies"][config["study"]]
    specs = [model_spec(config, name) for name in study["models"]]
    here = [spec.backbone for spec in specs if spec.backbone["source"] == "pretrain"]
    return {
        "name": config["study"],
        "models": study["models"],
        "datasets": study["datasets"],
        "sizes": "/".join(str(s) for s in sorted({spec.img_size for spec in specs})),
        "pretrained_here": bool(here),
        "pretrain_data": sorted({b.get("dataset", "synthetic images") for b in here}),
        "epochs": config["train"]["epochs"],
        "seeds": len(study["seeds"]),
        "smallest_p": 2.0 * 0.5 ** len(study["seeds"]),
    }


def qalora_merge_gap(runs: pd.DataFrame) -> float:
    """The largest relative logit gap between QA-LoRA's merged INT-N model and its unmerged model
    over the exported QA-LoRA runs (the export reports' ``int_vs_unmerged``): what rounding the
    shifted zeros to fp16 costs. NaN without such runs."""
    column = "export_int_vs_unmerged_max_rel"
    if column not in runs:
        return math.nan
    return float(runs.loc[runs.method.map(method_family) == "qalora", column].max())


def macros(
    cells: pd.DataFrame, transfer: pd.DataFrame, baselines: pd.DataFrame | None = None
) -> dict[str, str]:
    """Named numbers for the prose: every cell's accuracy and CI, the transfer check, and each
    classical baseline's test top-1 (``\\BaselineSvcDigitsTopOne``)."""
    named = {}
    for b in [] if baselines is None else baselines.to_dict("records"):
        named[macro_name("baseline", b["baseline"], b["dataset"], "top1")] = fmt(b["test_top1"])
    for _, row in cells.iterrows():
        key = (row["method"], row["dataset"], row["model"])
        named[macro_name(*key, "top1")] = fmt(row["test_top1_mean"])
        named[macro_name(*key, "top1", "ci")] = fmt(ci_half(row))
        named[macro_name(*key, "seeds")] = str(int(row["n_seeds"]))
        named[macro_name(*key, "params")] = fmt_count(row["trainable_params"])
        if "export_top1_int_mean" in row:
            named[macro_name(*key, "int", "top1")] = fmt(row["export_top1_int_mean"])
            named[macro_name(*key, "int", "change")] = fmt(row["int_change_mean"])
    for _, row in transfer.iterrows():
        key = ("transfer", row["dataset"], row["model"])
        named[macro_name(*key, "gain")] = fmt(row["diff_mean"])
        named[macro_name(*key, "gain", "ci", "low")] = fmt(row["diff_ci_low"])
        named[macro_name(*key, "gain", "ci", "high")] = fmt(row["diff_ci_high"])
        named[macro_name(*key, "p")] = fmt(row["p_value"], 3)
    return named


def write_tables(
    runs_csv,
    cell_stats_csv,
    transfer_csv,
    comparisons_csv,
    rank_ablation_json,
    config: dict[str, Any],
    backbone_metas: list[str | Path],
    manifests: list[str | Path],
    out_dir: str | Path,
    compute: dict[str, Any] | None = None,
    baselines: list[str | Path] = (),
    lr_choices: list[str | Path] = (),
) -> None:
    """Render every generated LaTeX part of the paper into ``out_dir``, for the config's selected study.

    Args:
        compute: the study's estimated compute (:class:`vitpeft.compute.StudyEstimate` as a dict),
            stated in the setup section with the time the runs took.
        baselines: the classical baselines' records (:mod:`vitpeft.baselines`).
        lr_choices: the tuning jobs' ``choice.json`` files (:mod:`vitpeft.tune`): the setup
            section prints each grid and the rate chosen.
    """
    out_dir = Path(out_dir)
    references = baselines_table(list(baselines))
    study = config["studies"][config["study"]]
    runs = pd.read_csv(runs_csv)
    cells = pd.read_csv(cell_stats_csv)
    transfer = pd.read_csv(transfer_csv)
    runs = runs.assign(order=runs.method.map(method_sort_key)).sort_values(
        ["dataset", "model", "order", "seed"]
    )
    compared = pd.read_csv(comparisons_csv)
    render(
        "results_table.tex.j2",
        out_dir / "results_table.tex",
        groups=result_groups(cells, significance_marks(compared), references),
        marks=REFERENCE_MARKS,
    )
    render("baselines.tex.j2", out_dir / "baselines.tex", standings=standings(cells, references))
    render(
        "ablation_table.tex.j2",
        out_dir / "ablation_table.tex",
        groups=ablation_groups(cells, compared),
        reference=RANK_REFERENCE,
        rank=read_json(rank_ablation_json),
    )
    render("runs_table.tex.j2", out_dir / "runs_table.tex", runs=runs.to_dict("records"))
    render("resources_table.tex.j2", out_dir / "resources_table.tex", groups=result_groups(cells))
    render(
        "quantization_table.tex.j2",
        out_dir / "quantization_table.tex",
        groups=result_groups(cells) if "export_top1_int_mean" in cells else [],
        merge_gap=qalora_merge_gap(runs),
    )
    converged = int(runs["converged"].fillna(False).astype(bool).sum()) if "converged" in runs else 0
    named = {
        "StudyTitle": tex_escape(study.get("title", "A PEFT study")),
        "RunsConverged": str(converged),  # by the criterion each run was judged by (the checklist's)
        "RunsTotal": str(len(runs)),
        "TrainingMemoryMeasure": memory_measure(runs),
        **macros(cells, transfer, references),
    }
    render("macros.tex.j2", out_dir / "macros.tex", macros=named)
    render("transfer.tex.j2", out_dir / "transfer.tex", transfer=transfer.to_dict("records"))
    compared = compared.assign(order=compared.method.map(method_sort_key)).sort_values(
        ["baseline", "dataset", "model", "order"]
    )
    render("comparisons.tex.j2", out_dir / "comparisons.tex", rows=compared.to_dict("records"))
    render("limitations.tex.j2", out_dir / "limitations.tex", **limitations(config))
    criterion = ConvergenceCriterion(**config.get("convergence", {}))
    backbones = [read_json(p) for p in backbone_metas]
    choices = [read_json(p) for p in lr_choices]
    tuned = sorted({choice["family"] for choice in choices})
    render(
        "setup.tex.j2",
        out_dir / "setup.tex",
        study=study,
        config=config,
        recipe=training_recipe(config),
        compute=compute,
        used=compute_used(runs, backbones, compute, choices) if compute else None,
        lr_choices=choices,
        tuned_families=tuned,
        hand_set_lrs={
            family: hp["lr"]
            for family, hp in config["methods"].items()
            if rate_family(family, config) not in tuned
        },
        convergence=criterion,
        # reported, not checked: a backbone that is still improving is weaker, not wrong
        backbones=[{**b, "convergence": criterion.judge(b["curves"]["val_top1"])} for b in backbones],
        datasets={Path(p).parent.name: read_json(p) for p in manifests},
        methods=sorted(runs.method.unique(), key=method_sort_key),
        arches={name: model_spec(config, name).arch for name in study["models"]},
        model_kwargs={name: model_spec(config, name).create_kwargs for name in study["models"]},
        citations=DATASET_CITATIONS,
        export=dataclasses.asdict(ExportConfig(**config.get("export", {}))),
        n_runs=len(runs),
        baselines=references.to_dict("records"),
        baseline_labels=BASELINE_LABELS,
        hardware=runs.reindex(columns=["cpu", "gpu", "device", "threads"])
        .drop_duplicates()
        .to_dict("records")
        if "cpu" in runs
        else [],
        device_names=DEVICE_NAMES,
    )
