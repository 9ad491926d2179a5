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
    threads: 1
    params:
        export=canonical(config["export"]),
    script:
        "../workflow_scripts/export.py"
