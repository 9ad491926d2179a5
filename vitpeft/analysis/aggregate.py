"""Collect per-run ``metrics.json`` files into tidy tables (one row per run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vitpeft.io import atomic_write, read_json

KEYS = ["dataset", "method", "model", "seed"]
PROVENANCE_COLUMNS = [
    *["git_commit", "git_dirty", "torch", "timm", "peft", "hostname", "cpu", "gpu", "threads"],
    "device",  # the one the run trained on (vitpeft.device)
]


def export_columns(report: dict) -> dict:
    """The export report's numbers as flat ``export_*`` columns."""
    top1, logits, size = report["test_top1"], report["logits"], report["bytes"]
    return {
        **{f"export_top1_{k}": v for k, v in top1.items()},
        **{f"export_{k}_max_rel": v["max_rel"] for k, v in logits.items()},
        **{f"export_{k}_bytes": v for k, v in size.items()},
        "export_int_route": report["int"]["route"],
        "export_int_bits": report["int"]["bits"],
        "export_int_group_size": report["int"]["group_size"],
    }


def run_row(metrics_path: str | Path, export_path: str | Path | None = None) -> dict:
    """One flat row: the scalar metrics of a run, its export's numbers, and where they came from."""
    metrics_path = Path(metrics_path)
    metrics = read_json(metrics_path)
    row = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    provenance_path = metrics_path.with_name("provenance.json")
    if provenance_path.exists():
        prov = read_json(provenance_path)
        flat = {**prov, **prov.get("packages", {}), **prov.get("hardware", {})}
        row.update({k: flat.get(k) for k in PROVENANCE_COLUMNS})
    if export_path is not None:
        row.update(export_columns(read_json(export_path)))
    row["run_dir"] = str(metrics_path.parent)
    return row


def runs_table(metrics_paths: list[str | Path], export_paths: list[str | Path] | None = None) -> pd.DataFrame:
    if not metrics_paths:
        raise ValueError("no runs to summarize")
    exports = export_paths or [None] * len(metrics_paths)
    if len(exports) != len(metrics_paths):
        raise ValueError(f"{len(metrics_paths)} runs but {len(exports)} export reports")
    rows = [run_row(m, e) for m, e in zip(metrics_paths, exports, strict=True)]
    return pd.DataFrame(rows).sort_values(KEYS, ignore_index=True)


def write_runs_table(metrics_paths: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """The runs of ``metrics_paths`` as a run table; with none (a study without the transfer check,
    or a partial one before its first run) a table of no rows."""
    frame = (
        runs_table(metrics_paths) if metrics_paths else pd.DataFrame(columns=[*KEYS, "test_top1", "run_dir"])
    )
    write_csv(frame, out_csv)
    return frame


def baselines_table(record_paths: list[str | Path]) -> pd.DataFrame:
    """The classical baselines' records (``vitpeft.baselines``), one row per baseline x dataset."""
    columns = ["dataset", "baseline", "label", "test_top1", "val_top1", "fit_time_s", "hyperparameters"]
    columns += ["train_images", "train_images_available", "subsampled", "candidates"]
    rows = [{k: read_json(p)[k] for k in columns} for p in record_paths]
    return pd.DataFrame(rows, columns=columns)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_write(path) as handle:
        frame.to_csv(handle, index=False)


def summarize_cell(
    metrics_paths: list[str | Path], out_csv: str | Path, export_paths: list[str | Path] | None = None
) -> pd.DataFrame:
    """A cell's ``summary.csv``: one row per model x seed of one method on one dataset.

    ``export_paths`` (the runs' export reports, in the same order) add the ``export_*`` columns.
    """
    frame = runs_table(metrics_paths, export_paths)
    cells = frame[["method", "dataset"]].drop_duplicates()
    if len(cells) != 1:
        raise ValueError(f"a cell holds one method on one dataset, got {cells.to_dict('records')}")
    write_csv(frame, out_csv)
    return frame


def aggregate(cell_csvs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Concatenate every cell's summary into the study's run table."""
    if not cell_csvs:
        raise ValueError("no finished cells to aggregate (a partial study needs at least one)")
    frame = pd.concat([pd.read_csv(p) for p in cell_csvs], ignore_index=True).sort_values(
        KEYS, ignore_index=True
    )
    write_csv(frame, out_csv)
    return frame
