"""Rule checklist: check the study's results and write the submission checklist and draft mark."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.checklist import write_checklist
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_checklist(
    snakemake.input.runs,
    snakemake.params.study,
    snakemake.params.methods,
    [*snakemake.input.figures, *snakemake.input.tables],
    out_tex=snakemake.output.tex,
    out_json=snakemake.output.json,
    out_draft=snakemake.output.draft,
    lr_choices=snakemake.input.lr_choices,
    transfer_runs_csv=snakemake.input.transfer_runs,
    transfer_seeds=snakemake.params.transfer_seeds,
)
