"""Rule cell: a method x dataset target folder with summary.csv, one row per model x seed."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.aggregate import summarize_cell
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
summarize_cell(
    list(snakemake.input.metrics),
    Path(snakemake.output[0]) / "summary.csv",
    export_paths=list(snakemake.input.exports),
)
