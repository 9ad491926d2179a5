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
    priority: job_priority()
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


# The transfer check's extra seeds (studies.<study>.transfer_seeds): full fine-tuning and scratch
# only, in a job of their own beside the study's seeds.
if EXTRA_TRANSFER_SEEDS:

    rule train_transfer_seeds:
        input:
            unpack(train_inputs),
            unpack(lr_choice),
        output:
            metrics=seed_files("metrics.json", EXTRA_TRANSFER_SEEDS),
            config=seed_files("config.json", EXTRA_TRANSFER_SEEDS),
            provenance=seed_files("provenance.json", EXTRA_TRANSFER_SEEDS),
            checkpoint=seed_files("checkpoint.safetensors", EXTRA_TRANSFER_SEEDS),
        log:
            seed_files("train.log", EXTRA_TRANSFER_SEEDS),
        benchmark:
            f"{JOB_DIR}/benchmark_transfer_seeds.tsv"
        wildcard_constraints:
            method="|".join(TRANSFER_METHODS),
        priority: job_priority(transfer_training_runs)
        conda:
            "../envs/vitpeft.yaml"
        threads: config["threads"]
        resources:
            gpu=job_resource("gpu", transfer_training_runs),
            mem_mb=job_resource("mem_mb", transfer_training_runs),
            runtime=job_resource("runtime", transfer_training_runs),
        params:
            runs=lambda wildcards: run_configs(wildcards, transfer_training_runs),
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
