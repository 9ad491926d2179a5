# Backbone pretraining on an offline source dataset (models whose backbone.source is pretrain).


rule pretrain:
    input:
        data=lambda wildcards: dataset_files(wildcards.dataset),
    output:
        weights="resources/backbones/{model}_{dataset}.safetensors",
        meta="resources/backbones/{model}_{dataset}.json",
    log:
        "results/logs/pretrain/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}_{dataset}.tsv"
    priority: 10000  # on the critical path: every run but scratch needs the backbone
    conda:
        "../envs/vitpeft.yaml"
    threads: config["pretrain"]["threads"]
    resources:
        gpu=job_resource("gpu", pretraining_runs),
        mem_mb=job_resource("mem_mb", pretraining_runs),
        runtime=job_resource("runtime", pretraining_runs),
    params:
        run=pretrain_config,
    script:
        "../workflow_scripts/pretrain.py"
