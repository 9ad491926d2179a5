# Every run merged and exported: safetensors, ONNX and INT-N ONNX (QA-LoRA's exact merge, or every
# other method's float merge quantized), checked numerically; one job per model x dataset x
# method, for all its seeds.


rule onnx_graph:
    input:
        manifest="resources/data/{dataset}/manifest.json",
    output:
        graph="resources/onnx/{model}_{dataset}.onnx",
        int_graph="resources/onnx/{model}_{dataset}_int.onnx",
    log:
        "results/logs/onnx_graph/{model}_{dataset}.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        model=lambda wildcards: canonical(config["models"][wildcards.model]),
        export=canonical(config["export"]),
    script:
        "../workflow_scripts/onnx_graph.py"


rule export:
    input:
        unpack(export_inputs),
        # the float graph and the INT-N stand-in's, traced once per architecture; each run's
        # weights fill them
        graph="resources/onnx/{model}_{dataset}.onnx",
        int_graph="resources/onnx/{model}_{dataset}_int.onnx",
    output:
        report=seed_files("export/report.json"),
        weights=seed_files("export/model.safetensors"),
        meta=seed_files("export/model.json"),
        onnx=seed_files("export/model.onnx"),
        int_onnx=seed_files("export/model_int.onnx"),
    log:
        seed_files("export.log"),
    benchmark:
        f"{JOB_DIR}/export_benchmark.tsv"
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=job_resource("mem_mb"),
        # on CPU, per seed: merges, ONNX exports, test passes
        runtime=lambda wildcards, attempt: 60 * len(STUDY["seeds"]) * attempt,
    params:
        export=canonical(config["export"]),
    script:
        "../workflow_scripts/export.py"
