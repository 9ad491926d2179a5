# Learning rates chosen on validation (vitpeft.tune): one job per method family x model x dataset
# trains a short seed run per rate of the family's grid, in one process, and writes the choice that
# the family's runs read their rate from. A checkpoint, so that rule train can read the choice
# when it plans its runs (see lr_choice and run_configs in common.smk).


checkpoint tune:
    input:
        unpack(tuning_inputs),
    output:
        choice=f"{TUNE_DIR}/choice.json",
    log:
        f"{TUNE_DIR}/tune.log",
    benchmark:
        f"{TUNE_DIR}/benchmark.tsv"
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        gpu=job_resource("gpu", runs_of=tuning_budget),
        mem_mb=job_resource("mem_mb", runs_of=tuning_budget),
        runtime=job_resource("runtime", runs_of=tuning_budget),
    params:
        runs=tuning_configs,
        convergence=canonical(config["convergence"]),
        max_extensions=config["tune"]["max_extensions"],
    script:
        "../workflow_scripts/tune.py"
