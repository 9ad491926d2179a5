"""Rule prepare_data: build one dataset's splits and manifest."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.data import prepare_dataset
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
prepare_dataset(
    snakemake.params.spec, Path(snakemake.output[0]).parent, archive=snakemake.input.get("archive")
)
