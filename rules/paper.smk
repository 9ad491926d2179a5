# The PDFs, built by latexmk in the template that paper.template names: paper.pdf from paper/ and
# the generated parts in results/paper/, supplement.pdf from the same parts and its own figures.
# Both depend only on their sources, the template and the generated parts, so an edit of the
# prose or of a template reruns these rules alone.


rule supplement_figures:
    input:
        runs="results/analysis/runs.csv",
        metrics=study_run_files("metrics.json"),  # the per-epoch curves
    output:
        **{
            curve: report(
                f"results/supplement/seed_{curve}.pdf", category="Supplement"
            )
            for curve in SEED_CURVES
        },
        adalora_epochs=report(
            "results/supplement/adalora_rank_epochs.pdf", category="Supplement"
        ),
    log:
        "results/logs/supplement_figures.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/supplement_figures.py"


rule paper:
    input:
        main=PAPER_DIR / "main.tex",
        sources=paper_sources(),
        template=paper_template(),
        generated=rules.tables.output,
        figures=rules.figures.output,
        draft=rules.checklist.output.draft,
        findings=rules.findings.output,
        published=rules.published.output,
    output:
        "paper.pdf",
    log:
        main="results/logs/paper.log",
        latexmk="results/logs/paper.latexmk.log",
        latex="results/logs/paper.tex.log",  # LaTeX's own log: its overfull-box warnings
    conda:
        "../envs/vitpeft.yaml"
    params:
        authors=lambda wildcards: config["paper"]["authors"],  # LaTeX's braces are no wildcards
        anonymous=config["paper"]["anonymous"],
    script:
        "../workflow_scripts/paper.py"


rule supplement:
    input:
        main=PAPER_DIR / "supplement.tex",
        sources=paper_sources(),
        template=paper_template(),
        generated=rules.tables.output,
        figures=rules.figures.output,
        checklist=rules.checklist.output.tex,
        draft=rules.checklist.output.draft,
        supplement_figures=rules.supplement_figures.output,
    output:
        "supplement.pdf",
    log:
        main="results/logs/supplement.log",
        latexmk="results/logs/supplement.latexmk.log",
        latex="results/logs/supplement.tex.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        authors=lambda wildcards: config["paper"]["authors"],  # LaTeX's braces are no wildcards
        anonymous=config["paper"]["anonymous"],
    script:
        "../workflow_scripts/paper.py"
