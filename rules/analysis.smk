# Aggregation, statistics, figures and the generated LaTeX parts of the paper.


rule aggregate:
    input:
        study_cells(),
    output:
        "results/analysis/runs.csv",
    log:
        "results/logs/aggregate.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/aggregate.py"


# The transfer check's runs, its extra seeds included (studies.<study>.transfer_seeds).
rule transfer_runs:
    input:
        transfer_run_files("metrics.json"),
    output:
        "results/analysis/transfer_runs.csv",
    log:
        "results/logs/transfer_runs.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/transfer_runs.py"


rule stats:
    input:
        "results/analysis/runs.csv",
        transfer_runs="results/analysis/transfer_runs.csv",
    output:
        cells="results/analysis/cell_stats.csv",
        transfer="results/analysis/transfer.csv",
        comparisons="results/analysis/comparisons.csv",
        rank_ablation="results/analysis/rank_ablation.json",
    log:
        "results/logs/stats.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/stats.py"


rule figures:
    input:
        runs="results/analysis/runs.csv",
        cells="results/analysis/cell_stats.csv",
        comparisons="results/analysis/comparisons.csv",
        metrics=study_run_files("metrics.json"),  # the per-epoch curves
        baselines=study_baselines(),
    output:
        params=report("results/paper/accuracy_vs_params.pdf", category="Figures"),
        memory=report("results/paper/accuracy_vs_memory.pdf", category="Figures"),
        convergence=report("results/paper/convergence.pdf", category="Figures"),
        adalora=report("results/paper/adalora_ranks.pdf", category="Figures"),
        resources=report("results/paper/resources.pdf", category="Figures"),
        rank=report("results/paper/rank_ablation.pdf", category="Figures"),
        stability=report("results/paper/gradient_stability.pdf", category="Figures"),
        stability_sentence="results/paper/gradient_stability.tex",  # the figure's sentence, a macro
    log:
        "results/logs/figures.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/figures.py"


rule tables:
    input:
        runs="results/analysis/runs.csv",
        cells="results/analysis/cell_stats.csv",
        transfer="results/analysis/transfer.csv",
        comparisons="results/analysis/comparisons.csv",
        rank_ablation="results/analysis/rank_ablation.json",
        backbones=study_backbone_metas(),
        manifests=study_manifests(),
        baselines=study_baselines(),
        lr_choices=study_lr_choices(),  # the setup section prints each grid and its choice
    output:
        expand(
            "results/paper/{part}.tex",
            part=[
                "results_table",
                "ablation_table",
                "resources_table",
                "quantization_table",
                "runs_table",
                "macros",
                "setup",
                "transfer",
                "comparisons",
                "baselines",
                "limitations",
            ],
        ),
    log:
        "results/logs/tables.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        # the setup section is written from it: a change rewrites it (scheduling keys excepted)
        config=canonical(study_config.results_view(config)),
        compute=dataclasses.asdict(STUDY_COMPUTE),
    script:
        "../workflow_scripts/tables.py"


# A failed check (missing cells, unconverged runs, tuned rates at an edge, ...) marks the paper
# and the supplement DRAFT on their first page; it does not stop the build.
rule checklist:
    input:
        runs="results/analysis/runs.csv",
        transfer_runs="results/analysis/transfer_runs.csv",
        figures=rules.figures.output,
        tables=rules.tables.output,
        lr_choices=study_lr_choices(),
    output:
        tex="results/paper/checklist.tex",
        json="results/analysis/checklist.json",
        draft="results/paper/draft.tex",
    log:
        "results/logs/checklist.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        study=canonical(STUDY),
        methods=METHODS,
        transfer_seeds=study_config.transfer_seeds(config),
    script:
        "../workflow_scripts/checklist.py"


# The findings section and the abstract's closing sentences, chosen by the statistics.
rule findings:
    input:
        runs="results/analysis/runs.csv",
        cells="results/analysis/cell_stats.csv",
        comparisons="results/analysis/comparisons.csv",
        rank_ablation="results/analysis/rank_ablation.json",
    output:
        findings="results/paper/findings.tex",
        abstract="results/paper/abstract_findings.tex",
    log:
        "results/logs/findings.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/findings.py"


# Published numbers beside the study's cells (vitpeft.analysis.published holds them, cited).
rule published:
    input:
        cells="results/analysis/cell_stats.csv",
        comparisons="results/analysis/comparisons.csv",
    output:
        "results/paper/published.tex",
    log:
        "results/logs/published.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        vtab_tasks=study_config.vtab_tasks(config),  # a VTAB-1k study also gets its VTAB table
    script:
        "../workflow_scripts/published.py"
