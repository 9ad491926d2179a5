"""Rule train: train and evaluate every seed of one model x dataset x method, in one process."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.runs import train_runs

train_runs(
    snakemake.params.runs,
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    out_dirs=[Path(path).parent for path in snakemake.output.metrics],
    logs=snakemake.log,
    threads=snakemake.threads,
    # From the config, not a param: it leaves results unchanged, so changing it must rerun nothing.
    checkpoint_every=snakemake.config["checkpoint_every"],
    convergence=snakemake.params.convergence,
)
