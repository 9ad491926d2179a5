"""Rule tune: the short runs of one method family x model x dataset over its grid of learning rates."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.tune import tune_family

log_to_file(snakemake.log[0])
tune_family(
    snakemake.params.runs,
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    choice_path=snakemake.output.choice,
    threads=snakemake.threads,
    convergence=snakemake.params.convergence,
    max_extensions=snakemake.params.max_extensions,
)
