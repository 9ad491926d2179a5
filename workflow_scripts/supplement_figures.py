"""Rule supplement_figures: every run's training curves, one line per seed."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.seed_curves import make_seed_curves
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
make_seed_curves(snakemake.input.runs, snakemake.input.metrics, out=dict(snakemake.output.items()))
