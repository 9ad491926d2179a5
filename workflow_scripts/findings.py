"""Rule findings: the findings section and the abstract's closing sentences, from the statistics."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.findings import write_findings
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_findings(
    snakemake.input.runs,
    snakemake.input.cells,
    snakemake.input.comparisons,
    snakemake.input.rank_ablation,
    out_findings=snakemake.output.findings,
    out_abstract=snakemake.output.abstract,
)
