"""Rule onnx_graph: trace a model's float ONNX graph and its INT-N stand-in's once, for the
exports of all its runs."""

from pathlib import Path

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.export import write_graph
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
write_graph(
    snakemake.wildcards.model,
    snakemake.params.model,
    data_dir=Path(snakemake.input.manifest).parent,
    path=snakemake.output.graph,
    int_path=snakemake.output.int_graph,
    export=snakemake.params.export,
)
