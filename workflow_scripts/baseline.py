"""Rule baseline: a classical classifier on one dataset's raw pixels, as a reference for the ViTs."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.baselines import fit_baseline
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
fit_baseline(
    snakemake.wildcards.baseline,
    data_dir=Path(snakemake.input.data[0]).parent,
    spec=snakemake.params.spec,
    out_json=snakemake.output[0],
    threads=snakemake.threads,
)
