"""Rule paper: latexmk builds paper.pdf."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.paper import build_pdf

log_to_file(snakemake.log[0])
build_pdf(
    snakemake.input.main,
    generated_dir=Path(snakemake.input.generated[0]).parent,
    out_pdf=snakemake.output[0],
    log_path=Path(snakemake.log[0]).with_suffix(".latexmk.log"),
)
