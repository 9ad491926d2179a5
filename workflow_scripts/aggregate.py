"""Rule aggregate: every cell's summary in one run table."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.aggregate import aggregate
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
aggregate([Path(cell) / "summary.csv" for cell in snakemake.input], snakemake.output[0])
