"""notebooks/explore_results.ipynb runs against the tiny study's results, and is committed clean."""

import json

import pytest
import yaml
from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "explore_results.ipynb"


def test_the_committed_notebook_has_no_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.e2e
def test_the_notebook_runs_on_a_finished_study(tiny_study, monkeypatch):
    import nbformat
    import pandas as pd
    from nbclient import NotebookClient

    monkeypatch.setenv("VITPEFT_RESULTS", str(tiny_study / "results"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    ).execute()

    def text(cell):
        return "".join(
            out.get("text", "") + "".join(out.get("data", {}).get("text/plain", ""))
            for out in cell["outputs"]
        )

    outputs = [text(c) for c in notebook.cells if c.cell_type == "code"]
    cells = pd.read_csv(tiny_study / "results" / "analysis" / "cell_stats.csv")
    assert f"{len(cells)} cells from" in outputs[0]
    lora = cells[cells.method == "lora_r8"].test_top1_mean.iloc[0]
    assert f"{lora:.1f}" in outputs[2] and "LoRA r=8" in outputs[2]  # the main table
    assert any(o.get("data", {}).get("image/png") for o in notebook.cells[7]["outputs"])  # the Pareto figure
    epochs = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())["train"]["epochs"]
    assert f"ranks after epoch {epochs}" in outputs[4] and "attn.qkv" in outputs[4]  # AdaLoRA's rank pattern
