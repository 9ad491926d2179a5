"""The tiny study through profiles/slurm on a real single-node SLURM cluster, against a local run.

As root (as in CI), the test installs Debian's slurm-wlm and munge if they are missing and starts
a throwaway cluster on loopback (tests/slurm_cluster.py). Elsewhere it is skipped, with the reason.
"""

import json
import os
import subprocess

import pytest
from conftest import REPO, TINY_CONFIG, snakemake_command
from slurm_cluster import install_packages, local_cluster

from vitpeft.reproduce import MACHINE_FIELDS

# These record the machine and the moment, not the result.
NOT_RESULTS = MACHINE_FIELDS | {"provenance"}
# Two cells keep the test short (each job through SLURM costs seconds of polling): LoRA and QLoRA,
# which also need the pretrained backbone. All 8 cells of the tiny study took 4.4 min here.
METHODS = ["lora_r8", "qlora4_r8"]
CELLS = [f"results/{method}_digits" for method in METHODS]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip(
            "SKIPPED THE SLURM TEST: it installs slurm-wlm and munge and starts SLURM daemons, which "
            "needs root. Run `make test` as root (as CI does) to run it."
        )
    install_packages()
    with local_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def results(workdir):
    """The cells' metrics and export reports, and the backbone's record, less timings and provenance."""
    files = [
        workdir / f"results/runs/digits/{method}/deit_tiny/seed0/{name}"
        for method in METHODS
        for name in ("metrics.json", "export/report.json")
    ]
    return {
        str(path.relative_to(workdir)): {
            k: v for k, v in json.loads(path.read_text()).items() if k not in NOT_RESULTS
        }
        for path in [*files, workdir / "resources/backbones/deit_tiny_shapes.json"]
    }


@pytest.mark.e2e
def test_tiny_study_on_slurm_equals_the_local_run(cluster, tiny_study, tmp_path):
    partition = f"slurm_partition={cluster.partition}"
    cmd = snakemake_command(
        tmp_path,
        TINY_CONFIG,
        "--profile",
        str(REPO / "profiles" / "slurm"),
        # The test cluster has one CPU partition, no GPU and no accounts: these replace the
        # profile's placeholders and its GPU partition for train and pretrain.
        "--default-resources",
        partition,
        "--set-resources",
        f"train:{partition}",
        f"pretrain:{partition}",
        # No accounting database here, so sacct cannot answer: squeue can, as MinJobAge is 600 s.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--latency-wait",
        "5",
        "--",
        *CELLS,
    )
    result = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stderr[-5000:]}\n{cluster.logs()}"

    # Each job of the runs went through SLURM once: train and pretrain asking for what config
    # resources give them (deit_tiny's 1500 MB and 5 min on digits, twice the time on shapes), and
    # export (not a localrule) with the defaults. Data preparation and the cells ran locally.
    lines = cluster.run("squeue", "--states=all", "--noheader", "--format=%k %T %l %m %C").splitlines()
    jobs = dict(line.split(" ", 1) for line in lines)
    assert len(jobs) == len(lines)
    # one train and one export job per model x dataset x method (all its seeds), and the model's
    # ONNX graph, traced once for the exports
    runs = [f"digits_{method}_deit_tiny" for method in METHODS]
    assert sorted(jobs) == sorted(
        ["rule_pretrain_wildcards_deit_tiny_shapes", "rule_onnx_graph_wildcards_digits_deit_tiny"]
        + [f"rule_{rule}_wildcards_{run}" for run in runs for rule in ("train", "export")]
    )
    assert all(job.startswith("COMPLETED ") for job in jobs.values()), jobs
    assert jobs["rule_pretrain_wildcards_deit_tiny_shapes"] == "COMPLETED 10:00 1500M 1"
    for run in runs:
        assert jobs[f"rule_train_wildcards_{run}"] == "COMPLETED 5:00 1500M 1"

    local, slurm = results(tiny_study), results(tmp_path)
    assert len(local) == 2 * len(METHODS) + 1
    for path, metrics in local.items():
        assert slurm[path] == metrics, path
    weights = [
        *[f"results/runs/digits/{method}/deit_tiny/seed0/checkpoint.safetensors" for method in METHODS],
        "resources/backbones/deit_tiny_shapes.safetensors",
    ]
    for path in weights:  # bit for bit: same seeds, same threads, same CPU
        assert (tmp_path / path).read_bytes() == (tiny_study / path).read_bytes(), path
    for method in METHODS:
        assert (tmp_path / f"results/runs/digits/{method}/deit_tiny/benchmark.tsv").exists()  # the job's
        assert (tmp_path / f"results/{method}_digits/summary.csv").exists()
    assert (tmp_path / "results/benchmarks/pretrain/deit_tiny_shapes.tsv").exists()
