"""Rule transfer_runs: the transfer check's runs (full fine-tuning and scratch) in one run table."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.aggregate import write_runs_table
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_runs_table(list(snakemake.input), snakemake.output[0])
