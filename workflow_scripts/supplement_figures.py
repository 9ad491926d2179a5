"""Rule supplement_figures: every run's training curves, one line per seed, and AdaLoRA's ranks
over the epochs."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.seed_curves import SEED_CURVES, make_seed_curves
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
make_seed_curves(
    snakemake.input.runs,
    snakemake.input.metrics,
    out={curve: getattr(snakemake.output, curve) for curve in SEED_CURVES},
    out_adalora_epochs=snakemake.output.adalora_epochs,
)
