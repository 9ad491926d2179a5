# Every run merged and exported: safetensors and ONNX, checked numerically. Methods whose merged
# model is INT-N (QA-LoRA) also export their integer codes as an INT-N ONNX file.


rule export:
    input:
        unpack(export_inputs),
    output:
        report=f"{RUN_DIR}/export/report.json",
        weights=f"{RUN_DIR}/export/model.safetensors",
        meta=f"{RUN_DIR}/export/model.json",
        onnx=f"{RUN_DIR}/export/model.onnx",
    log:
        f"{RUN_DIR}/export.log",
    benchmark:
        f"{RUN_DIR}/export/benchmark.tsv"
    wildcard_constraints:
        method=method_wildcard(
            f for f in METHODS_BY_FAMILY if f not in INT_EXPORT_FAMILIES
        ),
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=job_resource("mem_mb"),
        runtime=lambda wildcards, attempt: 60 * attempt,  # on CPU: merges, ONNX exports, test passes
    params:
        export=canonical(config["export"]),
    script:
        "../workflow_scripts/export.py"


use rule export as export_int with:
    output:
        **rules.export.output,
        int_onnx=f"{RUN_DIR}/export/model_int.onnx",
    wildcard_constraints:
        method=method_wildcard(INT_EXPORT_FAMILIES),
