"""Rule published: published numbers beside the study's cells."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.published import write_published
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_published(
    snakemake.input.cells, snakemake.input.comparisons, snakemake.output[0], snakemake.params.vtab_tasks
)
