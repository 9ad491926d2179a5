"""The benchmark scripts run, at sizes that take seconds, and print what they promise.

Their numbers are not checked here: benchmarks measure, tests assert behaviour. The point is that
a user who runs one, on a GPU machine above all, does not meet a broken script.
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SNAKEMAKE

from vitpeft import compute
from vitpeft import config as study_config

METHODS = ["full", "linear", "lora_r8", "qlora8_r8", "qlora4_r8", "adalora_r8", "qalora4_r8"]


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


TINY_DEVICE_CHECK = (
    "--model",
    "deit_tiny",
    "--img-size",
    "16",
    "--patch-size",
    "4",
    "--batch-size",
    "4",
    "--steps",
    "1",
)


def tiny_device_check(*args: str) -> subprocess.CompletedProcess:
    """device_check.py at a size a CPU runs in seconds, whatever its exit status."""
    command = [sys.executable, str(REPO / "benchmarks" / "device_check.py"), *TINY_DEVICE_CHECK, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_device_check_measures_every_method_it_can_when_one_fails(tmp_path):
    """On a first run on a new device one broken method must not cost the others' measurements."""
    rates = tmp_path / "rates.json"
    result = tiny_device_check(
        "--methods", "linear,no_such_method,lora_r8", "--recipe", "plain", "--json", str(rates)
    )
    assert result.returncode != 0
    assert "1 of 3 failed: no_such_method" in result.stderr
    assert re.search(r"^no_such_method FAILED$", result.stdout, re.M)
    measured = json.loads(rates.read_text())
    assert [rate["method"] for rate in measured["rates"]] == ["linear", "lora_r8"]
    assert (measured["recipe"], measured["source_size"]) == ("plain", 16)


def test_device_check_measures_a_compiled_precision_that_the_runtime_estimate_finds(tiny_config, tmp_path):
    """``--compile --precision fp16`` trains compiled with the loss scaler and says what torch.compile
    made of it; its file gives the rate of a run that trains so, not of one at auto (fp32 on the
    CPU, as the file records) or eager."""
    rates = tmp_path / "rates.json"
    out = run_script(
        "device_check.py",
        *TINY_DEVICE_CHECK,
        *("--methods", "linear", "--compile", "--precision", "fp16", "--json", str(rates)),
    )
    assert "batch 4, 1 timed steps, the full recipe of cifar10 on 32 px sources, precision fp16" in out
    rate = json.loads(rates.read_text())["rates"][0]
    assert (rate["graphs"], rate["graph_breaks"]) == (1, 0)
    # it trained as the full study's runs do, besides the batch size asked for
    assert rate["randaugment"] and rate["mixing"] and rate["erasing_prob"] == 0.25
    assert (rate["label_smoothing"], rate["ema_decay"]) == (0.1, 0.99992)
    assert re.search(r"^linear +compiled into 1 graphs, 0 graph breaks$", out, re.M)
    measured = compute.MeasuredRates.read(str(rates))
    assert (measured.auto_precision, measured.recipe) == ("fp32", "full")
    run = study_config.resolve_run(tiny_config, "deit_tiny", "digits", "linear", 0)
    assert (run.train.compile, run.train.precision) == (False, "auto")

    def trained(**train) -> study_config.RunConfig:
        train = {"batch_size": 4} | train
        return dataclasses.replace(run, train=dataclasses.replace(run.train, **train))

    assert (
        compute.measured_images_per_s(measured, trained(compile=True, precision="fp16"))
        == rate["images_per_s"]
    )
    assert rate["images_per_s"] > 0
    for other in (trained(), trained(precision="fp16"), trained(compile=True), trained(batch_size=8)):
        assert compute.measured_images_per_s(measured, other) is None
    # Rates measured another way do not join the file: they would not be this recipe's.
    result = tiny_device_check("--methods", "linear", "--recipe", "plain", "--json", str(rates))
    assert result.returncode != 0
    assert f"{rates} holds rates measured with recipe 'full', this run's is 'plain'" in result.stderr


def test_device_check_trains_each_method_with_a_studys_recipe_or_a_plain_one(monkeypatch):
    """The rates behind a GPU study's runtimes are measured as its runs train: config.yaml's
    hyperparameters and weight average for each method, the dataset's augmentation and stored image
    side, the study's regularization and batch size."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from device_check import Recipe

    def recipe(name: str, dataset: str | None = None, batch_size: int | None = None) -> Recipe:
        return Recipe.of(
            argparse.Namespace(recipe=name, dataset=dataset, batch_size=batch_size, img_size=224)
        )

    full = recipe("full")
    assert (full.dataset, full.batch_size, full.source_size) == ("cifar10", 128, 32)
    method, augment, regularization = full.run("qalora4_r8")
    assert (method.group_size, method.weight_decay, method.ema_decay) == (16, 0.05, 0.99992)
    assert augment.randaugment and augment.randaugment_magnitude == 27 and augment.erasing_prob == 0.25
    assert (augment.mixup_alpha, augment.cutmix_alpha, augment.scale) == (0.8, 1.0, (0.08, 1.0))
    assert regularization == {"grad_clip": 0.0, "label_smoothing": 0.1}
    assert full.run("adalora_r8")[0].ema_decay == 0.0  # it prunes in place: no average
    assert recipe("full", "tinyimagenet").source_size == 64 and recipe("full", batch_size=32).batch_size == 32
    vtab = recipe("vtab")  # VTAB-1k's images are stored at the input size, and not augmented
    assert (vtab.dataset, vtab.source_size) == ("cifar", 224) and not vtab.run("lora_r8")[1].randaugment
    plain = recipe("plain")
    method, augment, regularization = plain.run("qalora4_r8")
    assert (plain.batch_size, plain.source_size) == (64, 224)
    assert method.ema_decay == 0.0 and not augment.randaugment and regularization == {}


def test_trainer_and_loader_benchmarks_print_their_ratios():
    out = run_script("trainer_vs_bare_loop.py", "--rounds", "1", "--steps", "2")
    assert re.search(r"lora_r8 / full: peak \d+\.\d+", out) and "qlora4_r8 / lora_r8" in out
    assert re.search(r"qalora4_r8 / lora_r8: peak \d+\.\d+", out)
    assert re.search(
        r"ratio\s+\d+\.\d+x", run_script("loader_vs_training.py", "--batch-size", "4", "--steps", "1")
    )


def test_work_fraction_reads_a_snakemake_log_and_splits_the_core_seconds(tmp_path):
    """A real Snakemake run of a stand-in workflow: two train jobs that record 0.5 s of training
    each (and keep a benchmark), and one two-thread job of another rule."""
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        '    input: expand("runs/{i}/metrics.json", i=range(2)), "other.txt"\n'
        "rule train:\n"
        '    output: "runs/{i}/metrics.json"\n'
        '    benchmark: "runs/{i}/benchmark.tsv"\n'
        """    shell: "sleep 1; echo '{{\\"train_time_s\\": 0.5}}' > {output}"\n"""
        "rule other:\n"
        '    output: "other.txt"\n'
        "    threads: 2\n"
        '    shell: "sleep 1; touch {output}"\n'
    )
    subprocess.run(
        [SNAKEMAKE, "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), "--cores", "2"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    summary = json.loads(run_script("work_fraction.py", str(tmp_path), "--json"))
    kinds = summary["kinds"]
    assert summary["cores"] == 2 and summary["offered_core_s"] == 2 * summary["wall_s"] > 0
    assert summary["runs_train_time_s"] == kinds["train: training"]["core_s"] == 1.0
    assert summary["work_fraction"] == 1.0 / summary["offered_core_s"]
    assert (kinds["train"]["jobs"], kinds["other"]["jobs"], kinds["all"]["jobs"]) == (2, 1, 1)
    assert kinds["train"]["benchmarked"] == 2 and kinds["train"]["cpu_s"] >= 0
    assert "benchmarked" not in kinds["other"]
    # Every offered core-second is held by some job or idle; the two-thread job holds two cores.
    assert abs(sum(k["core_s"] for k in kinds.values()) - summary["offered_core_s"]) < 1e-6
    assert kinds["other"]["core_s"] % 2 == 0 and kinds["other"]["core_s"] >= 2
    assert "work fraction" in run_script("work_fraction.py", str(tmp_path))


def test_work_fraction_counts_the_tune_checkpoint_and_its_runs_training(tmp_path):
    """Snakemake logs a checkpoint as ``checkpoint tune:``; its grid's short runs are training."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from work_fraction import summarize

    (tmp_path / "choice.json").write_text(
        json.dumps({"grid": [{"train_time_s": 2.0}, {"train_time_s": 3.0}]})
    )
    log = tmp_path / "x.snakemake.log"
    log.write_text(
        "Provided cores: 1\n"
        "[Thu Nov 26 10:00:00 2026]\n"
        "checkpoint tune:\n"
        "    output: choice.json\n"
        "    jobid: 1\n"
        "[Thu Nov 26 10:00:10 2026]\n"
        "Finished jobid: 1 (Rule: tune)\n"
    )
    summary = summarize(tmp_path, log)
    assert summary["kinds"]["tune"]["jobs"] == 1
    assert summary["runs_train_time_s"] == 5.0 and summary["work_fraction"] == 0.5


def study_log(path, jobs):
    """A Snakemake log of finished jobs, each (rule, its first output), one second apart."""
    lines = ["Provided cores: 2"]
    for jobid, (rule, output) in enumerate(jobs, 1):
        lines += [f"[Thu Nov 26 10:00:{2 * jobid:02d} 2026]", f"rule {rule}:", f"    output: {output}"]
        lines += [
            f"    jobid: {jobid}",
            f"[Thu Nov 26 10:00:{2 * jobid + 1:02d} 2026]",
            f"Finished jobid: {jobid}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_floor_charges_each_job_what_its_script_and_method_import(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import import_floor

    run = "results/runs/digits/{}/vit/seed0/{}"
    log = study_log(
        tmp_path / "x.snakemake.log",
        [
            ("train", run.format("lora_r8", "metrics.json")),
            ("train", run.format("qalora4_r8", "metrics.json")),
            ("export", run.format("qlora4_r8", "export/report.json")),
            ("export", run.format("full", "export/report.json")),
            ("tune", "results/tuning/digits/adalora/vit/choice.json"),
            ("pretrain", "resources/backbones/vit_glyphs.safetensors"),
            ("onnx_graph", "resources/onnx/vit_digits.onnx"),
            ("baseline", "results/baselines/digits/svc.json"),  # scikit-learn: no torch
        ],
    )
    (tmp_path / run.format("lora_r8", "metrics.json")).parent.mkdir(parents=True)
    (tmp_path / run.format("lora_r8", "metrics.json")).write_text(json.dumps({"train_time_s": 0.5}))
    cost = {("vitpeft.runs",): 1.0, ("vitpeft.runs", "peft"): 2.0, ("vitpeft.export",): 1.5}
    cost[("vitpeft.export", "peft")] = 3.0
    monkeypatch.setattr(import_floor, "import_cpu_s", lambda modules, repeats: (cost[modules], cost[modules]))
    floor = import_floor.import_floor(tmp_path, log, repeats=1)
    jobs = {s["modules"]: s["rules"] for s in floor["sets"]}
    assert jobs == {
        ("vitpeft.runs",): {"train": 1, "pretrain": 1},
        ("vitpeft.runs", "peft"): {"train": 1, "tune": 1},
        ("vitpeft.export",): {"export": 1, "onnx_graph": 1},
        ("vitpeft.export", "peft"): {"export": 1},
    }
    assert floor["jobs"] == 7 and floor["import_core_s"] == 2 * 1.0 + 2 * 2.0 + 2 * 1.5 + 3.0
    assert floor["bound"] == 0.5 / (0.5 + 12.0)  # a job of the log lasts 1 s


def test_import_floor_times_the_imports_and_prints_the_bound(tmp_path):
    log = study_log(tmp_path / "x.snakemake.log", [("onnx_graph", "resources/onnx/vit_digits.onnx")])
    out = run_script("import_floor.py", str(tmp_path), "--log", str(log), "--repeats", "1")
    assert re.search(r"vitpeft\.export\s+[\d.]+ CPU-s .* x  1 jobs \(onnx_graph 1\)", out), out
    assert "1 jobs import torch" in out and "with nothing but these imports" in out


def test_gradient_stability_cost_prints_the_recording_against_the_step():
    out = run_script("gradient_stability_cost.py", "--steps", "2", "--epochs", "1", "--repeats", "10")
    assert re.search(r"recording, clipping on\s+\d+\.\d us\s+ratio \d+\.\d{4}$", out, re.M)
    assert re.search(r"recording, clipping off\s+\d+\.\d us\s+ratio \d+\.\d{4} ", out, re.M)


def test_augment_ops_counts_the_full_augmentation_at_two_batch_sizes():
    out = run_script("augment_ops.py", "--img-size", "16")
    assert re.search(r"^batch 128  RandAugment, per image\s+\d+ ops", out, re.M)
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"ops per batch: (\d+) at batch 32, (\d+) at batch 128", last)
    assert match, last
    at_32, at_128 = map(int, match.groups())
    assert 0 < at_128 <= 1.1 * at_32


def test_gpu_check_rehearsed_on_the_cpu_runs_every_step_and_keeps_each_log(tmp_path):
    """The prepared GPU check as one command, at a size a CPU runs in about two minutes: the
    device check trains every method through the trainer (peft's and our layer classes), the bnb
    check compares the CPU's bases with themselves (their bytes, a reload, the biases after a bf16
    step), and every method trains and exports through Snakemake,
    QLoRA's with its quantized base. Each step's log and the measured rates land in $OUT."""
    out = tmp_path / "out"
    env = os.environ | {
        "OUT": str(out),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("gpu_check: 0 of 4 steps failed")

    bases_log = (out / "bnb_cuda_check.log").read_text()
    bases = re.findall(
        r"^(int8|nf4|nf4 dq|fp4) +bytes .* \(equal\) .* reload gap (\S+)  bias kept ", bases_log, re.M
    )
    assert bases == [("int8", "0.00e+00"), ("nf4", "0.00e+00"), ("nf4 dq", "0.00e+00"), ("fp4", "0.00e+00")]
    groupwise = re.findall(
        r"^qalora(\d) group-wise base: 0 of ([\d,]+) codes, scales and zeros differ", bases_log, re.M
    )
    assert [bits for bits, _ in groupwise] == ["4", "2"] and all(total != "0" for _, total in groupwise)

    checked = (out / "device_check.log").read_text()
    rows = dict(re.findall(r"^(\w+)\s+[\d.]+ img/s .* qkv (\S+)$", checked, re.M))
    assert list(rows) == METHODS
    assert rows["qlora4_r8"] == "peft.tuners.lora.bnb.Linear4bit"
    assert rows["qalora4_r8"] == "vitpeft.methods.qalora_layer.QALoraLinear"
    assert re.search(r"^lora_r8 +trainer / bare loop \d+\.\d{3} \(", checked, re.M)
    rates = json.loads((out / "rates.json").read_text())["rates"]  # the auto rates, then fp16's added
    assert [(rate["method"], rate["precision"]) for rate in rates] == [
        (method, "fp32") for method in METHODS
    ] + [
        ("lora_r8", "fp16"),
        ("qlora4_r8", "fp16"),
        ("qalora4_r8", "fp16"),
    ]
    assert rates[2]["bare_loop_images_per_s"] > 0
    measured = compute.MeasuredRates.read(str(out / "rates.json"))  # one file, both precisions
    assert len(measured.images_per_s) == len(METHODS) + 3 and measured.auto_precision == "fp32"

    studied = (out / "gpu_study.log").read_text()
    found = re.findall(
        r"^\s*(\w+): \S+ (?:fp32|bf16|fp16), RandAugment mixup cutmix erasing EMA (0|0.9), \d+ img/s, "
        r"test top-1 [\d.]+%, exports passed \((.*)\)$",
        studied,
        re.M,
    )
    rows = {method: (ema, exports) for method, ema, exports in found}
    assert list(rows) == METHODS  # each with the full study's augmentation and weight average
    assert {method: ema for method, (ema, _) in rows.items() if ema == "0"} == {"adalora_r8": "0"}
    assert rows["lora_r8"][1] == "int_onnx, onnx, safetensors"
    assert rows["qlora4_r8"][1] == "adapter, base_quantized, int_onnx, onnx, safetensors"
