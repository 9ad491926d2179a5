"""Rule aggregate: every cell's summary in one run table."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from pathlib import Path

from vitpeft.analysis.aggregate import aggregate
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
aggregate([Path(cell) / "summary.csv" for cell in snakemake.input], snakemake.output[0])
