# Prepared datasets: uint8 splits plus a manifest of checksums, under resources/data/{dataset}/.


rule prepare_data:
    output:
        expand("resources/data/{{dataset}}/{name}", name=SPLIT_FILES),
    log:
        "results/logs/prepare_data/{dataset}.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        spec=lambda wildcards: config["datasets"][wildcards.dataset],
    script:
        "../workflow_scripts/prepare_data.py"
