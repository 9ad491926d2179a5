"""Rule pretrain: train a backbone from random init on the offline source dataset."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.device import enable_mps_fallback

enable_mps_fallback(snakemake.config["device"])  # before torch loads (vitpeft.device)

from vitpeft.io import log_to_file  # noqa: E402
from vitpeft.runs import pretrain_backbone  # noqa: E402

log_to_file(snakemake.log[0])
pretrain_backbone(
    snakemake.params.run,
    data_dir=Path(snakemake.input.data[0]).parent,
    weights_out=snakemake.output.weights,
    meta_out=snakemake.output.meta,
    threads=snakemake.threads,
    # From the config, not a param: it leaves results unchanged, so changing it must rerun nothing.
    checkpoint_every=snakemake.config["checkpoint_every"],
    # Also from the config: on another device a run is the same experiment (provenance names it).
    device=snakemake.config["device"],
)
