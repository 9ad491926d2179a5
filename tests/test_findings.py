"""The findings section: planted effects in synthetic runs, and each sentence flips with the data."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitpeft.analysis import findings, published, stats, tables
from vitpeft.methods import parse_method_name

SEEDS = 6
STUDY_SEEDS = 3  # what the studies run, and where a test's power is smallest
# The accuracy each method is planted at (test top-1, %), before seed and run noise.
NULL = {
    "full": 80.0,
    "linear": 70.0,
    "lora_r4": 80.0,
    "lora_r8": 80.0,
    "lora_r16": 80.0,
    "qlora8_r8": 80.0,
    "qlora4_r8": 80.0,
    "adalora_r8": 80.0,
    "qalora4_r8": 80.0,
}


def planted_runs(
    accuracy=None,
    int_loss=None,
    noise=0.3,
    cells=(("digits", "vit"),),
    rng_seed=0,
    seeds=SEEDS,
    merge_gap=None,
):
    """Runs with per-method mean accuracies (``accuracy`` over :data:`NULL`) and per-method INT-N
    losses (``int_loss``: trained minus INT-N, points; 0 for methods not named), plus a per-seed
    effect that pairing removes and run noise (``noise`` 0: every seed gives the same difference).
    Costs: trainable parameters grow with the rank and are largest for full fine-tuning.
    ``merge_gap``: per method, the export report's largest INT-N logit gap (relative)."""
    accuracy = {**NULL, **(accuracy or {})}
    int_loss = int_loss or {}
    rng = np.random.default_rng(rng_seed)
    rows = []
    for dataset, model in cells:
        for seed in range(seeds):
            shared = rng.normal(0, 2)
            for method, mean in accuracy.items():
                family, fields = parse_method_name(method)
                top1 = mean + shared + rng.normal(0, noise)
                params = {"full": 1e6, "linear": 1e3}.get(family, 1e4 * fields.get("r", 1))
                rows.append(
                    {
                        "dataset": dataset,
                        "model": model,
                        "method": method,
                        "seed": seed,
                        "test_top1": top1,
                        "test_top5": 99.0,
                        "val_top1": top1,
                        "trainable_params": params,
                        "train_peak_mem_mb": 100.0 if family == "full" else 50.0,
                        "export_top1_unmerged": top1,
                        "export_top1_int": top1 - int_loss.get(method, 0.0) + rng.normal(0, noise / 10)
                        if method in int_loss
                        else top1,
                        "export_int_bits": 4,
                        "export_int_group_size": 16,
                        **(
                            {"export_int_vs_unmerged_max_rel": merge_gap.get(method, 0.0)}
                            if merge_gap is not None
                            else {}
                        ),
                    }
                )
    return pd.DataFrame(rows)


def section(runs: pd.DataFrame, tmp_path) -> tuple[str, str]:
    """The rendered findings section and abstract sentences, flattened to one line each."""
    out, abstract = tmp_path / "findings.tex", tmp_path / "abstract_findings.tex"
    runs_csv, cells_csv, compared_csv, rank_json = (
        tmp_path / n for n in ("r.csv", "c.csv", "p.csv", "k.json")
    )
    runs.to_csv(runs_csv, index=False)
    stats.write_stats(runs_csv, cells_csv, tmp_path / "t.csv", compared_csv, rank_json)
    findings.write_findings(runs_csv, cells_csv, compared_csv, rank_json, out, abstract)
    flat = (" ".join(p.read_text().split()) for p in (out, abstract))
    return tuple(flat)


def sentence(text: str, start: str) -> str:
    match = re.search(re.escape(start) + r"[^.]*(\.\d[^.]*)*\.", text)
    assert match, f"no sentence starting {start!r} in {text}"
    return match.group(0)


LORA = r"LoRA ($r{=}8$)"


def points(claim: str) -> float:
    """The signed difference a sentence states: ``is $3.1$ points below`` -> -3.1."""
    size, side = re.search(r"is \$([\d.]+)\$ points (above|below)", claim).groups()
    return float(size) if side == "above" else -float(size)


def test_lora_against_full_flips_between_below_unclear_and_above(tmp_path):
    below, abstract = section(planted_runs({"full": 83.0}), tmp_path)
    claim = sentence(below, "Against full fine-tuning")
    assert f"{LORA} is $" in claim and "points below full fine-tuning" in claim
    assert points(claim) == pytest.approx(-3.0, abs=0.4)
    assert "Holm-corrected $p < 0.001$" in claim and "95\\% CI" in claim
    assert "below full fine-tuning" in abstract

    null, _ = section(planted_runs({"full": 80.0}), tmp_path)
    claim = sentence(null, "Against full fine-tuning")
    assert "the data cannot tell" in claim and "includes zero" in claim
    assert "below" not in claim and "above" not in claim

    above, _ = section(planted_runs({"full": 77.0}), tmp_path)
    assert "points above full fine-tuning" in sentence(above, "Against full fine-tuning")


def test_a_quantized_base_costs_accuracy_only_where_the_data_show_it(tmp_path):
    costs, _ = section(planted_runs({"qlora4_r8": 77.0}), tmp_path)
    four = sentence(costs, "Over a 4-bit base")
    assert "points below" in four and "the quantized base costs accuracy" in four
    assert "the data cannot tell" in sentence(costs, "Over an 8-bit base")

    free, _ = section(planted_runs(), tmp_path)
    four = sentence(free, "Over a 4-bit base")
    assert "the data cannot tell" in four and "costs accuracy" not in four


def test_qalora_exact_merge_against_quantizing_a_float_merge(tmp_path):
    # The naive route loses 2 points when LoRA's fp32 merge is quantized; QA-LoRA's merge is exact.
    text, abstract = section(planted_runs(int_loss={"lora_r8": 2.0}), tmp_path)
    exact = sentence(text, "QA-LoRA 4-bit")
    assert "gives the same test top-1 as the trained model on every seed" in exact
    naive = sentence(text, "Merged in fp32")
    assert re.search(r"LoRA \(\$r\{=\}8\$\)'s INT-4 model loses \$(1\.9|2\.0|2\.1)\$ points", naive)
    deployed = sentence(text, "Deployed,")
    assert "points above" in deployed
    assert "merged into INT-4 codes (exact up to one fp16 rounding per zero) is" in abstract
    assert "points above" in abstract

    # Nothing lost either way: the sentences say so, and the deployed models cannot be told apart.
    text, _ = section(planted_runs(int_loss={"lora_r8": 0.0}), tmp_path)
    assert "the same test top-1" in sentence(text, "QA-LoRA 4-bit")
    assert "loses" not in sentence(text, "Merged in fp32")
    assert "the data cannot tell" in sentence(text, "Deployed,")


def test_adalora_against_lora_at_the_same_budget(tmp_path):
    wins, _ = section(planted_runs({"adalora_r8": 82.0}), tmp_path)
    claim = sentence(wins, "At the same average rank budget")
    assert "AdaLoRA ($r{=}8$) is" in claim and points(claim) == pytest.approx(2.0, abs=0.4)
    ties, _ = section(planted_runs(), tmp_path)
    assert "the data cannot tell AdaLoRA" in sentence(ties, "At the same average rank budget")


def test_the_rank_at_which_lora_stops_rising_moves_with_the_data(tmp_path):
    rises_to_8, _ = section(planted_runs({"lora_r4": 76.0, "lora_r8": 80.0, "lora_r16": 80.0}), tmp_path)
    claim = sentence(rises_to_8, "LoRA's accuracy")
    assert "stops rising significantly at $r = 8$" in claim and "the data cannot tell" in claim

    always, _ = section(planted_runs({"lora_r4": 76.0, "lora_r8": 80.0, "lora_r16": 84.0}), tmp_path)
    assert "rises significantly with every doubling of the rank up to $r = 16$" in always

    flat, _ = section(planted_runs(), tmp_path)
    assert "does not rise significantly beyond the smallest rank tested, $r = 4$" in flat


def test_a_significant_later_doubling_is_no_stopping_point_at_3_seeds(tmp_path):
    # 4 -> 8 cannot be told apart; 8 -> 16 rises by 4 points: accuracy has not stopped rising.
    planted = planted_runs({"lora_r4": 80.0, "lora_r8": 80.0, "lora_r16": 84.0}, seeds=STUDY_SEEDS)
    text, _ = section(planted, tmp_path)
    assert "does not rise significantly beyond" not in text and "stops rising significantly" not in text
    assert "still rises significantly at the last doubling, to $r = 16$" in sentence(text, "LoRA's accuracy")
    steps = sentence(text, "Doubling by doubling").split("; $r =")
    assert "$r = 4 \\to 8$" in steps[0] and steps[0].endswith("the data cannot tell")
    assert steps[-1].startswith(" 8 \\to 16$: $4.") and steps[-1].endswith("significantly higher.")


def test_a_stopping_point_is_the_last_significant_rise_at_3_seeds(tmp_path):
    # 4 -> 8 is flat, 8 -> 16 rises, 16 -> 32 is flat: accuracy stops rising at r = 16, not at 4.
    ranks = {"lora_r4": 80.0, "lora_r8": 80.0, "lora_r16": 84.0, "lora_r32": 84.0}
    text, _ = section(planted_runs(ranks, seeds=STUDY_SEEDS, noise=0.2), tmp_path)
    claim = sentence(text, "LoRA's accuracy")
    assert claim.startswith(
        "LoRA's accuracy stops rising significantly at $r = 16$: from $r = 16$ to $r = 32$"
    )
    assert "no later doubling is significantly higher" not in claim  # 16 -> 32 is the last


IDENTICAL_CI = re.compile(r"CI \$(-?[\d.]+)\$ to \$\1\$")


def test_identical_differences_get_their_own_wording_at_3_seeds(tmp_path):
    # No run noise: LoRA is 1.0 point below full fine-tuning on every seed; the exact sign test's
    # p is 0.25 before any correction, the smallest that 3 seeds allow.
    text, abstract = section(planted_runs({"full": 81.0}, noise=0.0, seeds=STUDY_SEEDS), tmp_path)
    claim = sentence(text, "Against full fine-tuning")
    assert f"{LORA} is $1.0$ points below full fine-tuning on every one of the 3 seeds" in claim
    assert "the smallest attainable $p$ is 0.25" in claim and "95\\% CI" not in claim
    assert "cannot make significant (the smallest attainable $p$ is 0.25)" in abstract
    assert "after Holm" not in abstract and "after Holm" not in claim
    # Methods equal on every seed say so, with no zero-width interval either.
    assert "give the same test top-1 on every one of the 3 seeds" in sentence(text, "At the same average")
    assert not IDENTICAL_CI.search(text) and not IDENTICAL_CI.search(abstract)


def test_the_abstract_counts_identical_differences_apart_from_holm_at_3_seeds(tmp_path):
    cells = (("cifar10", "deit_tiny"), ("cifar100", "deit_tiny"))
    runs = pd.concat(
        [
            planted_runs({"full": 81.0}, noise=0.0, cells=cells[:1], seeds=STUDY_SEEDS),
            planted_runs({"full": 82.0}, noise=0.0, cells=cells[1:], seeds=STUDY_SEEDS, rng_seed=1),
        ]
    )
    _, abstract = section(runs, tmp_path)
    counted = sentence(abstract, "Across the model--dataset pairs")
    assert (
        "differs by the same amount on every seed, which too few seeds cannot make significant, in 2 of 2"
        in counted
    )
    assert "Holm" not in counted


def test_the_deployed_comparisons_are_a_holm_family_at_3_seeds(tmp_path):
    text, _ = section(planted_runs(int_loss={"lora_r8": 2.0}, seeds=STUDY_SEEDS), tmp_path)
    assert "the deployed INT-$N$ comparisons on one model and data set" in text.split("\\paragraph")[0]
    deployed = sentence(text, "Deployed,")
    assert "points above" in deployed and "Holm-corrected $p" in deployed


def test_the_qalora_merge_is_exact_up_to_fp16_zeros_with_its_measured_gap(tmp_path):
    planted = planted_runs(seeds=STUDY_SEEDS, merge_gap={"qalora4_r8": 5.1e-4, "lora_r8": 0.02})
    text, abstract = section(planted, tmp_path)
    merge = sentence(text, "QA-LoRA 4-bit")
    assert "merges into its INT-4 base (group size 16) up to one fp16 rounding of each shifted zero" in merge
    assert "at most 0.00051 of the largest logit" in merge
    assert "merges exactly" not in text.lower() and "merges exactly" not in abstract.lower()


def test_the_pareto_frontier_names_the_methods_nothing_cheaper_beats(tmp_path):
    # Accuracy rises with the trainable parameters along linear, LoRA's ranks and full; the other
    # r = 8 methods cost what LoRA r = 8 costs and are less accurate, so they stay off the frontier.
    ladder = {"lora_r4": 75.0, "lora_r16": 85.0, "qlora8_r8": 77.0, "qlora4_r8": 77.0, "adalora_r8": 77.0}
    text, _ = section(planted_runs({**ladder, "qalora4_r8": 77.0, "full": 90.0}), tmp_path)
    params = sentence(text, "By mean test top-1").split(";")[0]
    assert params.endswith(
        r"holds Linear probe, LoRA ($r{=}4$), LoRA ($r{=}8$), LoRA ($r{=}16$) and Full fine-tuning"
    )
    # Full fine-tuning below LoRA r = 16 is beaten by something cheaper: off the frontier.
    text, _ = section(planted_runs({**ladder, "qalora4_r8": 77.0, "full": 84.0}), tmp_path)
    params = sentence(text, "By mean test top-1").split(";")[0]
    assert params.endswith(r"LoRA ($r{=}16$)") and "Full fine-tuning" not in params


def test_missing_methods_drop_their_sentences(tmp_path):
    runs = planted_runs()
    text, abstract = section(runs[~runs.method.isin(["adalora_r8", "qalora4_r8", "full"])], tmp_path)
    assert "At the same average rank budget" not in text and "QA-LoRA" not in text
    assert "Against full fine-tuning" not in text and "full fine-tuning" not in abstract


def test_one_seed_gives_no_interval_and_says_the_data_cannot_tell(tmp_path):
    runs = planted_runs({"full": 90.0})
    text, _ = section(runs[runs.seed == 0], tmp_path)
    assert "one seed gives no interval, so the data cannot tell" in sentence(text, "Against full fine-tuning")


def test_several_cells_are_counted_in_the_abstract(tmp_path):
    cells = (("cifar10", "deit_tiny"), ("cifar100", "deit_tiny"))
    runs = pd.concat(
        [
            planted_runs({"full": 84.0}, cells=cells[:1]),
            planted_runs({"full": 80.0}, cells=cells[1:], rng_seed=1),
        ]
    )
    text, abstract = section(runs, tmp_path)
    assert "below in 1, cannot be told apart in 1 of 2 pairs" in abstract
    assert text.count("Against full fine-tuning") == 2


@pytest.mark.parametrize(
    ("low", "high", "p", "expected"),
    [
        (0.5, 2.0, 0.01, "higher"),
        (-2.0, -0.5, 0.01, "lower"),
        (0.5, 2.0, 0.2, "uncorrected"),
        (-0.5, 2.0, 0.01, "unclear"),
        (float("nan"), float("nan"), float("nan"), "unclear"),
    ],
)
def test_verdict_reads_the_interval_before_the_p_value(low, high, p, expected):
    assert findings.verdict(low, high, p) == expected


def published_table(cells: pd.DataFrame, compared: pd.DataFrame, tmp_path) -> str:
    cells_csv, compared_csv, out = tmp_path / "c.csv", tmp_path / "p.csv", tmp_path / "published.tex"
    cells.to_csv(cells_csv, index=False)
    compared.to_csv(compared_csv, index=False)
    published.write_published(cells_csv, compared_csv, out)
    return out.read_text()


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rendered table, cells stripped of their ``\\raggedright``."""
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    lines = [line for line in body.split(r"\tabularnewline") if "&" in line]
    return [[re.sub(r"^\\raggedright\s*", "", c.strip()) for c in line.split(" & ")] for line in lines]


def test_the_demo_shows_the_published_rows_and_says_it_is_not_comparable(tmp_path):
    runs = planted_runs()
    text = published_table(stats.cell_stats(runs), stats.comparisons(runs), tmp_path)
    rows = table_rows(text)
    assert len(rows) == len(published.PUBLISHED)
    with_data_set = [row for row, r in zip(rows, published.PUBLISHED, strict=True) if r.dataset]
    assert len(with_data_set) == len(rows) - 1 and all(row[3] == "--" for row in with_data_set)
    # QLoRA's row names no data set: the demo's own 4-bit-minus-fp32 difference stands beside it.
    qlora = next(row for row in rows if "NF4" in row[1])
    diff = stats.paired_difference(runs, "qlora4_r8", "lora_r8").iloc[0]
    assert qlora[3] == f"${tables.fmt(diff.diff_mean)} \\pm {tables.fmt(diff.diff_ci_high - diff.diff_mean)}$"
    assert "shares no data set with the other rows" in " ".join(text.split())
    assert r"\citet{caron2021dino}" in text and "$89.5$" in text and "$92.43$" in text


def test_the_full_study_lines_up_its_own_cells_beside_the_published_ones(tmp_path):
    cells = (("cifar100", "deit_small"), ("cifar100", "vit_small"), ("cifar10", "deit_small"))
    runs = pd.concat(
        [
            planted_runs({"full": 88.0, "lora_r8": 86.0}, cells=cells[:2]),
            planted_runs({"full": 97.0, "qlora4_r8": 79.0}, cells=cells[2:], rng_seed=3),
        ]
    )
    cell_stats, compared = stats.cell_stats(runs), stats.comparisons(runs)
    rows = table_rows(published_table(cell_stats, compared, tmp_path))
    by_setting = {row[1]: row for row in rows}

    def ours(dataset, model, method):
        cell = cell_stats[(cell_stats.dataset == dataset) & (cell_stats.model == model)]
        return cell[cell.method == method].iloc[0]

    deit_c100 = by_setting["ViT-S/16 supervised on ImageNet (DeiT-S), fine-tuned on CIFAR-100"]
    expected = ours("cifar100", "deit_small", "full")
    assert deit_c100[3].startswith(f"${expected.test_top1_mean:.1f} \\pm") and "deit\\_small" in deit_c100[3]
    lora = by_setting["LoRA ($r{=}8$) on the full CIFAR-100"]
    assert lora[3].startswith(f"${ours('cifar100', 'vit_small', 'lora_r8').test_top1_mean:.1f}")
    assert "ViT-B/16" in lora[4]  # the published model differs, and the row says so
    # QLoRA's difference: the range of our cells' 4-bit-minus-fp32 differences.
    qlora = next(row for row in rows if "NF4" in row[1])
    diffs = compared[(compared.method == "qlora4_r8") & (compared.baseline == "lora_r8")].diff_mean
    assert qlora[3] == f"${diffs.min():.1f}$ to ${diffs.max():.1f}$ {{\\scriptsize (3 cells)}}"
    assert diffs.min() < -0.5  # the planted 1-point cost on CIFAR-10


def test_every_published_number_is_cited_from_the_bibliography():
    bib = (Path(__file__).resolve().parent.parent / "paper" / "refs.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    assert {r.citation for r in published.PUBLISHED} <= keys


def test_a_difference_that_no_test_of_the_seeds_can_make_significant_is_not_blamed_on_holm():
    # Every seed -1.0: zero-width interval, exact sign p = 0.25 before correction and 1.0 after.
    assert findings.verdict(-1.0, -1.0, 1.0, uncorrected_p=0.25) == "too_few_seeds"
    # Significant before correction, not after: Holm changed the verdict.
    assert findings.verdict(-2.0, -0.5, 0.08, uncorrected_p=0.02) == "uncorrected"
    assert findings.smallest_p(3) == 0.25
