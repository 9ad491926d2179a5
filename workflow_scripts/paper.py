"""Rule paper: latexmk builds paper.pdf."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.paper import build_pdf

log_to_file(snakemake.log[0])
build_pdf(snakemake.params.main, snakemake.params.generated_dir, snakemake.output[0], snakemake.log[0] + ".latexmk")
