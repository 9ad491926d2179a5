"""Rule figures: the paper's figures as vector PDFs."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.figures import make_figures
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
make_figures(
    snakemake.input.runs, snakemake.input.cells, snakemake.output.params, snakemake.output.convergence
)
