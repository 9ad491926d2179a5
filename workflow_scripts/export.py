"""Rule export: merge one run, save safetensors and ONNX, and check them against the trained model."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.export import export_run
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
export_run(
    Path(snakemake.input.metrics).parent,
    data_dir=Path(snakemake.input.data[0]).parent,
    backbone=snakemake.input.get("backbone"),
    out_dir=Path(snakemake.output.report).parent,
    export=snakemake.params.export,
)
