"""Rule train: train and evaluate one model x dataset x method x seed."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.runs import train_run

log_to_file(snakemake.log[0])
train_run(
    snakemake.params.run,
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    out_dir=Path(snakemake.output.metrics).parent,
    threads=snakemake.threads,
    # From the config, not a param: it leaves results unchanged, so changing it must rerun nothing.
    checkpoint_every=snakemake.config["checkpoint_every"],
    convergence=snakemake.params.convergence,
)
