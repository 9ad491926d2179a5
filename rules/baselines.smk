# Classical reference classifiers (scikit-learn) on each study dataset's raw pixels, same splits.


rule baseline:
    input:
        data=lambda wildcards: dataset_files(wildcards.dataset),
    output:
        "results/baselines/{dataset}/{baseline}.json",
    log:
        "results/logs/baseline/{dataset}/{baseline}.log",
    benchmark:
        "results/benchmarks/baseline/{dataset}/{baseline}.tsv"
    conda:
        "../envs/vitpeft.yaml"
    threads: 1
    params:
        spec=baseline_spec,
    script:
        "../workflow_scripts/baseline.py"
