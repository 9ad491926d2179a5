# The study, from one config to one paper:
#   snakemake --cores 2                        everything: paper.pdf and supplement.pdf (the default)
#   snakemake --cores 2 paper.pdf              the paper only
#   snakemake --cores 1 results/lora_r8_digits  one cell: a method on a dataset, all models x seeds
#   snakemake -n <target>                       plan without running
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/backbone.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/baselines.smk"
include: "rules/export.smk"
include: "rules/analysis.smk"
include: "rules/paper.smk"
include: "rules/submission.smk"


# Quick, I/O-light jobs run where Snakemake runs (the login node on a cluster).
localrules:
    all,
    download,
    prepare_data,
    cell,
    aggregate,
    stats,
    figures,
    tables,
    checklist,
    paper,
    supplement_figures,
    supplement,
    submission,


rule all:
    default_target: True
    input:
        "paper.pdf",
        "supplement.pdf",
