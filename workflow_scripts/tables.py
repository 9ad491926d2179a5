"""Rule tables: the generated LaTeX parts of the paper (tables, setup, macros)."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.analysis.tables import write_tables
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_tables(
    snakemake.input.runs,
    snakemake.input.cells,
    snakemake.input.transfer,
    snakemake.input.comparisons,
    snakemake.input.rank_ablation,
    config=snakemake.params.config,
    compute=snakemake.params.compute,
    backbone_metas=snakemake.input.backbones,
    manifests=snakemake.input.manifests,
    out_dir=Path(snakemake.output[0]).parent,
    baselines=snakemake.input.baselines,
    lr_choices=snakemake.input.lr_choices,
)
