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

# These record the machine and the moment, not the result.
NOT_RESULTS = {"train_time_s", "train_images_per_s", "peak_mem_mb", "provenance"}


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
    """Every run's metrics.json and the backbone's record, without timings and provenance."""
    files = sorted(workdir.glob("results/runs/*/*/*/*/metrics.json")) + sorted(
        workdir.glob("resources/backbones/*.json")
    )
    return {
        str(path.relative_to(workdir)): {
            k: v for k, v in json.loads(path.read_text()).items() if k not in NOT_RESULTS
        }
        for path in files
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
        "paper.pdf",
    )
    result = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stderr[-5000:]}\n{cluster.logs()}"

    # Each training job went through SLURM once, asking for what config resources give it:
    # deit_tiny's base (1500 MB, 5 min) for the runs on digits, twice the time to pretrain on shapes.
    jobs = cluster.run("squeue", "--states=all", "--noheader", "--format=%T %k %l %m %C").splitlines()
    trained = sorted(tiny_study.glob("results/runs/*/*/*/*/metrics.json"))
    expected = ["COMPLETED rule_pretrain_wildcards_deit_tiny_shapes 10:00 1500M 1"] + [
        f"COMPLETED rule_train_wildcards_{run.parts[-5]}_{run.parts[-4]}_deit_tiny_0 5:00 1500M 1"
        for run in trained
    ]
    assert sorted(jobs) == sorted(expected)

    local, slurm = results(tiny_study), results(tmp_path)
    assert sorted(slurm) == sorted(local) and len(local) == len(trained) + 1
    for path, metrics in local.items():
        assert slurm[path] == metrics, path
    weights = [
        *tiny_study.glob("results/runs/*/*/*/*/checkpoint.safetensors"),
        *tiny_study.glob("resources/backbones/*.safetensors"),
    ]
    assert len(weights) == len(trained) + 1
    for path in weights:  # bit for bit: same seeds, same threads, same CPU
        assert (tmp_path / path.relative_to(tiny_study)).read_bytes() == path.read_bytes(), path
    for run in trained:
        assert (tmp_path / run.relative_to(tiny_study)).with_name("benchmark.tsv").exists()
    assert (tmp_path / "results/benchmarks/pretrain/deit_tiny_shapes.tsv").exists()
    assert (tmp_path / "paper.pdf").exists()
