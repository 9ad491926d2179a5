"""Rule train: train and evaluate every seed of one model x dataset x method, in one process."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.device import enable_mps_fallback

enable_mps_fallback(snakemake.config["device"])  # before torch loads (vitpeft.device)

from vitpeft.runs import train_runs  # noqa: E402

train_runs(
    snakemake.params.runs,
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    out_dirs=[Path(path).parent for path in snakemake.output.metrics],
    logs=snakemake.log,
    threads=snakemake.threads,
    # From the config, not a param: it leaves results unchanged, so changing it must rerun nothing.
    checkpoint_every=snakemake.config["checkpoint_every"],
    # Also from the config: on another device a run is the same experiment (provenance names it).
    device=snakemake.config["device"],
    convergence=snakemake.params.convergence,
)
