"""Rule figures: the paper's figures as vector PDFs."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.figures import make_figures
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
make_figures(
    snakemake.input.runs,
    snakemake.input.cells,
    snakemake.input.comparisons,
    snakemake.input.metrics,
    out_params=snakemake.output.params,
    out_memory=snakemake.output.memory,
    out_convergence=snakemake.output.convergence,
    out_adalora=snakemake.output.adalora,
    out_resources=snakemake.output.resources,
    out_rank=snakemake.output.rank,
    out_stability=snakemake.output.stability,
    out_stability_sentence=snakemake.output.stability_sentence,
    baselines=snakemake.input.baselines,
)
