"""Rule export: merge every seed of one model x dataset x method, save safetensors and ONNX, and
check them against the trained models."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.export import export_runs

export_runs(
    [Path(path).parent for path in snakemake.input.metrics],
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    out_dirs=[Path(path).parent for path in snakemake.output.report],
    logs=snakemake.log,
    export=snakemake.params.export,
    graph=snakemake.input.graph,
    int_graph=snakemake.input.int_graph,
)
