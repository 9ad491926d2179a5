"""Rule submission: bundle the paper and everything behind it into one checksummed archive."""

from _package import REPOSITORY  # (also puts the repository's vitpeft package on sys.path)

from vitpeft.io import log_to_file
from vitpeft.submission import build_submission

log_to_file(snakemake.log[0])
build_submission(
    snakemake.output[0],
    checklist_json=snakemake.input.checklist_json,
    config=snakemake.params.config,
    source_repository=REPOSITORY,  # its tracked files at HEAD go in (git archive)
    paper_pdf=snakemake.input.paper,
    supplement_pdf=snakemake.input.supplement,
    generated=[
        *snakemake.input.generated,
        *snakemake.input.figures,
        *snakemake.input.supplement_figures,
        snakemake.input.checklist_tex,
        snakemake.input.draft,
    ],
    tables=[snakemake.input.runs, *snakemake.input.tables],
    environment=snakemake.input.environment,
    manifests=snakemake.input.manifests,
    runs_csv=snakemake.input.runs,
)
