# Every run merged and exported: safetensors, ONNX (float) and ONNX (INT-N codes), checked numerically.


rule export:
    input:
        unpack(export_inputs),
    output:
        report=f"{RUN_DIR}/export/report.json",
        weights=f"{RUN_DIR}/export/model.safetensors",
        meta=f"{RUN_DIR}/export/model.json",
        onnx=f"{RUN_DIR}/export/model.onnx",
        int_onnx=f"{RUN_DIR}/export/model_int.onnx",
    log:
        f"{RUN_DIR}/export.log",
    conda:
        "../envs/vitpeft.yaml"
    threads: config["threads"]
    resources:
        mem_mb=job_resource("mem_mb"),
        runtime=lambda wildcards, attempt: 60 * attempt,  # on CPU: merges, two ONNX exports, test passes
    params:
        export=canonical(config["export"]),
    script:
        "../workflow_scripts/export.py"
