# One job per model x dataset x method, training its seeds one after another in one process (a
# run target, results/runs/.../seed0/metrics.json, builds its job), and the cell target that
# gathers a method's runs.


rule train:
    input:
        unpack(train_inputs),
        unpack(lr_choice),
    output:
        metrics=seed_files("metrics.json"),
        config=seed_files("config.json"),
        provenance=seed_files("provenance.json"),
        checkpoint=seed_files("checkpoint.safetensors"),
    log:
        seed_files("train.log"),
    benchmark:
        f"{JOB_DIR}/benchmark.tsv"
    priority: job_priority
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        gpu=job_resource("gpu"),
        mem_mb=job_resource("mem_mb"),
        runtime=job_resource("runtime"),
    params:
        # at the tuned learning rate: a changed choice reruns the runs
        runs=run_configs,
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
