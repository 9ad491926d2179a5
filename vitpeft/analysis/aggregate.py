"""Collect per-run ``metrics.json`` files into tidy tables (one row per run)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vitpeft.io import atomic_write, read_json

KEYS = ["dataset", "method", "model", "seed"]
PROVENANCE_COLUMNS = ["git_commit", "git_dirty", "torch", "timm", "peft", "hostname", "cpu", "gpu", "threads"]


def run_row(metrics_path: str | Path) -> dict:
    """One flat row: the scalar metrics of a run plus where they came from."""
    metrics_path = Path(metrics_path)
    metrics = read_json(metrics_path)
    row = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    provenance_path = metrics_path.with_name("provenance.json")
    if provenance_path.exists():
        prov = read_json(provenance_path)
        flat = {**prov, **prov.get("packages", {}), **prov.get("hardware", {})}
        row.update({k: flat.get(k) for k in PROVENANCE_COLUMNS})
    row["run_dir"] = str(metrics_path.parent)
    return row


def runs_table(metrics_paths: list[str | Path]) -> pd.DataFrame:
    if not metrics_paths:
        raise ValueError("no runs to summarize")
    return pd.DataFrame([run_row(p) for p in metrics_paths]).sort_values(KEYS, ignore_index=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_write(path) as handle:
        frame.to_csv(handle, index=False)


def summarize_cell(metrics_paths: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """A cell's ``summary.csv``: one row per model x seed of one method on one dataset."""
    frame = runs_table(metrics_paths)
    cells = frame[["method", "dataset"]].drop_duplicates()
    if len(cells) != 1:
        raise ValueError(f"a cell holds one method on one dataset, got {cells.to_dict('records')}")
    write_csv(frame, out_csv)
    return frame


def aggregate(cell_csvs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Concatenate every cell's summary into the study's run table."""
    frame = pd.concat([pd.read_csv(p) for p in cell_csvs], ignore_index=True).sort_values(
        KEYS, ignore_index=True
    )
    write_csv(frame, out_csv)
    return frame
