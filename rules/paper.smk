# The PDF, built by latexmk from paper/ and the generated parts in results/paper/.


rule paper:
    input:
        main=PAPER_DIR / "main.tex",
        sources=paper_sources(),
        generated=rules.tables.output,
        figures=rules.figures.output,
        checklist=rules.checklist.output.tex,
        findings=rules.findings.output,
        published=rules.published.output,
    output:
        "paper.pdf",
    log:
        "results/logs/paper.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/paper.py"
