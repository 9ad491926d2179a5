"""Rule stats: per-cell statistics over seeds and the transfer check."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.stats import write_stats
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_stats(
    snakemake.input[0],
    snakemake.output.cells,
    snakemake.output.transfer,
    snakemake.output.comparisons,
    snakemake.output.rank_ablation,
    transfer_runs_csv=snakemake.input.transfer_runs,
)
