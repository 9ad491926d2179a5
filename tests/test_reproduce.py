import pytest

from vitpeft.io import read_json, write_json
from vitpeft.reproduce import KERNEL_RTOL, differences, main, reproduce, tolerance


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real tiny run (scratch: no backbone needed), as the train rule leaves it."""
    import yaml
    from conftest import REPO

    from vitpeft import config as study_config
    from vitpeft.data import prepare_dataset
    from vitpeft.runs import train_run

    root = tmp_path_factory.mktemp("reproduce")
    config = study_config.load(yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text()))
    prepare_dataset(config["datasets"]["digits"], root / "data")
    run = study_config.resolve_run(config, "deit_tiny", "digits", "scratch", 0).to_dict()
    train_run(run, root / "data", None, root / "run", threads=1)
    return root


def test_a_cpu_rerun_reproduces_every_metric_exactly(finished_run, capsys):
    report = reproduce(finished_run / "run", finished_run / "data")
    assert report["matches"] and report["rtol"] == 0 and report["differences"] == []
    assert report["test_top1"]["rerun"] == read_json(finished_run / "run" / "metrics.json")["test_top1"]
    assert main([str(finished_run / "run"), "--data-dir", str(finished_run / "data")]) == 0
    assert "reproduced on cpu (exactly: same CPU model and instruction set, " in capsys.readouterr().out


def test_a_rerun_on_another_cpu_is_held_to_the_stated_tolerance(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    provenance = read_json(run / "provenance.json")
    provenance["hardware"]["cpu"] = "AMD EPYC 7B13"
    write_json(run / "provenance.json", provenance)
    metrics = read_json(run / "metrics.json")
    metrics["test_loss"] *= 1 + KERNEL_RTOL / 2  # as another CPU's kernels might leave it
    write_json(run / "metrics.json", metrics)
    assert main([str(run), "--data-dir", str(finished_run / "data")]) == 0
    out = capsys.readouterr().out
    assert f"reproduced on cpu (within {KERNEL_RTOL:g} relative: another CPU, AMD EPYC 7B13 with " in out


def cpu_record(cpu="Intel(R) Xeon(R) Processor", capability="AVX512", device="cpu"):
    return {"device": device, "hardware": {"cpu": cpu, "cpu_capability": capability}}


@pytest.mark.parametrize(
    ("original", "here", "rtol", "reason"),
    [
        (
            cpu_record(),
            cpu_record(),
            0.0,
            "same CPU model and instruction set, Intel(R) Xeon(R) Processor with AVX512",
        ),
        (
            cpu_record(),
            cpu_record(cpu="AMD EPYC 7B13"),
            KERNEL_RTOL,
            "another CPU, Intel(R) Xeon(R) Processor with AVX512, then AMD EPYC 7B13 with AVX512",
        ),
        (
            cpu_record(),
            cpu_record(capability="AVX2"),
            KERNEL_RTOL,
            "another CPU, Intel(R) Xeon(R) Processor with AVX512, then Intel(R) Xeon(R) Processor with AVX2",
        ),
        # written before the instruction set was recorded: the same CPU cannot be shown
        (
            {"device": "cpu", "hardware": {"cpu": "Intel(R) Xeon(R) Processor"}},
            cpu_record(),
            KERNEL_RTOL,
            "another CPU, Intel(R) Xeon(R) Processor with an unrecorded instruction set, then "
            "Intel(R) Xeon(R) Processor with AVX512",
        ),
        (
            cpu_record(device="cuda"),
            cpu_record(),
            KERNEL_RTOL,
            "on cuda, then cpu; GPU kernels differ from CPU ones and may be nondeterministic",
        ),
        (
            cpu_record(device="cuda:0"),
            cpu_record(device="cuda"),
            KERNEL_RTOL,
            "on cuda, then cuda; GPU kernels differ from CPU ones and may be nondeterministic",
        ),
    ],
)
def test_exact_only_on_the_same_cpu_model_and_instruction_set(original, here, rtol, reason):
    allowed = tolerance(original, here)
    assert (allowed.rtol, allowed.reason) == (rtol, reason)
    assert str(allowed).startswith("exactly: " if rtol == 0 else f"within {KERNEL_RTOL:g} relative: ")


def test_a_changed_number_is_named(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    metrics = read_json(run / "metrics.json")
    metrics["test_top1"] += 0.5
    metrics["train_time_s"] *= 2  # the machine's, not the run's: never compared
    write_json(run / "metrics.json", metrics)
    assert main([str(run), "--data-dir", str(finished_run / "data")]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced" in out and f"test_top1: {metrics['test_top1']!r} != " in out
    assert "train_time_s" not in out


def test_other_data_is_refused(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run / "data", tmp_path / "data")
    manifest = read_json(tmp_path / "data" / "manifest.json")
    manifest["note"] = "changed"
    write_json(tmp_path / "data" / "manifest.json", manifest)
    with pytest.raises(ValueError, match="is not the data that"):
        reproduce(finished_run / "run", tmp_path / "data")


def test_differences_walks_nested_records_and_respects_a_tolerance():
    a = {"x": 1.0, "curves": {"val": [1.0, 2.0]}, "peak_mem_mb": 5}
    b = {"x": 1.0, "curves": {"val": [1.0, 2.01]}, "peak_mem_mb": 9, "extra": 1}
    assert differences(a, b) == ["curves.val[1]: 2.0 != 2.01", "extra: only in the rerun"]
    assert differences(a, b, rtol=0.02) == ["extra: only in the rerun"]
