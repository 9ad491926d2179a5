# The PDF, built by latexmk from paper/ and the generated parts in results/paper/.


rule paper:
    input:
        sources=paper_sources(),
        generated=rules.tables.output,
        figures=rules.figures.output,
    output:
        "paper.pdf",
    params:
        main=PAPER_DIR / "main.tex",
        generated_dir="results/paper",
    log:
        "results/logs/paper.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/paper.py"
