"""Rules paper and supplement: latexmk builds the PDF in the configured template."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.paper import build_pdf

log_to_file(snakemake.log.main)
build_pdf(
    snakemake.input.main,
    generated_dir=Path(snakemake.input.generated[0]).parent,
    out_pdf=snakemake.output[0],
    log_path=snakemake.log.latexmk,
    template=snakemake.input.template[0],  # the template's own file
    latex_log=snakemake.log.latex,
    figure_dirs=sorted({Path(p).parent for p in snakemake.input.get("supplement_figures", [])}),
    authors=snakemake.params.authors,
    anonymous=snakemake.params.anonymous,
)
