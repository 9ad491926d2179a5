# One job per model x dataset x method x seed, and the cell target that gathers a method's runs.


rule train:
    input:
        unpack(train_inputs),
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        config=f"{RUN_DIR}/config.json",
        provenance=f"{RUN_DIR}/provenance.json",
        checkpoint=f"{RUN_DIR}/checkpoint.safetensors",
    log:
        f"{RUN_DIR}/train.log",
    benchmark:
        f"{RUN_DIR}/benchmark.tsv"
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        gpu=job_resource("gpu"),
        mem_mb=job_resource("mem_mb"),
        runtime=job_resource("runtime"),
    params:
        run=run_config,
        # a param: metrics.json records the verdict by this criterion, so a change reruns the runs
        convergence=canonical(config["convergence"]),
    script:
        "../workflow_scripts/train.py"


rule cell:
    input:
        unpack(cell_runs),
    output:
        directory("results/{method}_{dataset}"),
    log:
        "results/logs/cell/{method}_{dataset}.log",
    conda:
        "../envs/vitpeft.yaml"
    script:
        "../workflow_scripts/summarize_cell.py"
