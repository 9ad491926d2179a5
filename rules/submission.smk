# One archive to submit: the paper and its supplement, their generated parts, the tables, the best
# run of every cell, the environment lock and the data manifests, with a SHA256SUMS list.


rule submission:
    input:
        paper="paper.pdf",
        supplement="supplement.pdf",
        supplement_figures=rules.supplement_figures.output,
        generated=[
            *rules.tables.output,
            *rules.findings.output,
            *rules.published.output,
        ],
        figures=rules.figures.output,
        tables=rules.stats.output,
        checklist_tex=rules.checklist.output.tex,
        draft=rules.checklist.output.draft,  # empty once the checklist passed; main.tex reads it
        checklist_json=rules.checklist.output.json,
        runs="results/analysis/runs.csv",
        # The best seed of each cell is picked from runs.csv as the job runs: every run's files.
        run_files=study_run_files(*SUBMITTED_RUN_FILES),
        environment=[
            Path(workflow.basedir) / name
            for name in ("requirements.txt", "constraints.txt", "envs/vitpeft.yaml")
        ],
        manifests=study_manifests(),
    output:
        "results/submission.tar.gz",
    log:
        "results/logs/submission.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        config=canonical(config),
    script:
        "../workflow_scripts/submission.py"
