import copy
import dataclasses
import json
import math

import pytest
import yaml
from conftest import REPO, prepare

from vitpeft import compute
from vitpeft import config as study_config
from vitpeft.config import ModelSpec
from vitpeft.data.sizes import split_sizes


def counted_flops(model, images):
    """FLOPs that torch's own counter sees in a forward pass, and in the backward pass after it."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        logits = model(images)
    with FlopCounterMode(display=False) as backward:
        logits.sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()


@pytest.mark.parametrize(
    ("name", "img_size", "patch_size", "kwargs", "method", "hyperparameters"),
    [
        ("deit_tiny", 224, 16, {}, "full", None),
        ("deit_tiny", 224, 16, {}, "linear", None),
        ("deit_tiny", 224, 16, {}, "lora_r8", None),
        ("deit_small", 224, 16, {"depth": 3}, "lora_r4", None),
        ("vit_small", 224, 16, {"depth": 2}, "full", None),
        # an adapter only from each block's MLP on: block 0's attention gets no backward
        ("deit_tiny", 64, 8, {"depth": 3}, "lora_r8", {"lora": {"target_modules": ["mlp.fc1", "mlp.fc2"]}}),
        (
            "deit_tiny",
            32,
            4,
            {"depth": 2, "embed_dim": 96, "mlp_ratio": 2.0, "num_heads": 3},
            "adalora_r8",
            None,
        ),
        ("deit_tiny", 32, 4, {"depth": 2}, "qalora4_r8", None),
        ("vit_w64_d4", 8, 4, {}, "lora_r8", None),  # the demo's model: its own width, depth and heads
    ],
)
def test_flops_per_image_agree_with_torchs_flop_counter(
    name, img_size, patch_size, kwargs, method, hyperparameters
):
    import torch

    from vitpeft.methods import method_config
    from vitpeft.models import create_model

    spec = ModelSpec(name, img_size=img_size, patch_size=patch_size, kwargs=kwargs)
    torch.manual_seed(0)
    model = create_model(spec, num_classes=100)
    for module in model.modules():  # explicit q k^T and attention @ v, which the counter sees on CPU
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    model = prepare(model, method, hyperparameters).model.train()
    forward, backward = counted_flops(model, torch.randn(1, 3, img_size, img_size))

    estimate = compute.image_flops(spec, method_config(method, hyperparameters), num_classes=100)
    assert estimate.forward == pytest.approx(forward, rel=1e-9)  # the same products, counted alike
    assert estimate.backward == pytest.approx(backward, rel=1e-9)


def test_backward_costs_follow_what_each_method_trains():
    from vitpeft.methods import method_config

    spec = ModelSpec("deit_small")
    flops = {m: compute.image_flops(spec, method_config(m), 10) for m in ("full", "linear", "lora_r8")}
    # Full: two gradients per product but one for the patch embedding (the images need none).
    assert 1.9 < flops["full"].backward / flops["full"].forward < 2.0
    assert flops["linear"].backward == 2 * 384 * 10  # the head's weight gradient, nothing more
    # LoRA: activation gradients (both operands of attention's products), adapters' weights
    assert 1.0 < flops["lora_r8"].backward / flops["lora_r8"].forward < 1.1


def test_split_sizes_are_those_of_the_prepared_datasets(tmp_path):
    from vitpeft.data import prepare_dataset

    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["datasets"]["glyphs"] = {  # the demo's source set, small: its classes come from `characters`
        "kind": "font_glyphs",
        "options": {"num_images": 120, "image_size": 8, "seed": 0, "characters": "0123"},
        "split_seed": 0,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
    }
    study_config.load(config)
    for name, spec in config["datasets"].items():
        manifest = prepare_dataset(spec, tmp_path / name)
        sizes = split_sizes(spec)
        assert {split: sum(counts) for split, counts in manifest["counts_per_class"].items()} == {
            split: sizes[split] for split in ("train", "val", "test")
        }
        assert sizes["classes"] == len(manifest["class_names"])


def test_split_sizes_of_the_official_archives_hold_out_validation_from_train():
    assert split_sizes({"kind": "cifar10", "val_fraction": 0.1}) == {
        "train": 45_000,
        "val": 5_000,
        "test": 10_000,
        "classes": 10,
    }
    assert split_sizes({"kind": "tinyimagenet", "val_fraction": 0.1})["train"] == 90_000


def test_a_run_trains_every_epoch_validates_after_each_and_tests_once(demo_config):
    run = study_config.resolve_run(demo_config, "vit_w64_d4", "digits", "lora_r8", 0)
    image = compute.image_flops(run.model, run.method, 10)
    splits = {"train": 100, "val": 10, "test": 7, "classes": 10}
    longer = dataclasses.replace(run, train=dataclasses.replace(run.train, epochs=run.train.epochs + 1))
    per_epoch = 100 * (image.forward + image.backward) + 10 * image.forward
    assert compute.run_flops(longer, splits) - compute.run_flops(run, splits) == pytest.approx(per_epoch)
    assert compute.run_flops(run, splits) == pytest.approx(run.train.epochs * per_epoch + 7 * image.forward)


@pytest.fixture
def full_study(demo_config):
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    return study_config.load({**raw, "study": "full"})


def test_a_gpu_jobs_runtime_request_is_its_estimate_with_the_margin_and_the_floor(full_study):
    margin, floor = full_study["resources"]["runtime_margin"], full_study["resources"]["min_runtime"]
    for method in ("full", "lora_r8", "qlora4_r8", "adalora_r8", "qalora4_r8", "linear"):
        # a job trains the three seeds of a deit_small CIFAR-10 cell one after another
        runs = [study_config.resolve_run(full_study, "deit_small", "cifar10", method, s) for s in range(3)]
        flops = sum(compute.estimated_flops(full_study, run) for run in runs)
        minutes = 60 * compute.gpu_hours(full_study, flops)
        request = compute.job_resources(full_study, runs)
        assert max(floor, margin * minutes) <= request["runtime"] < max(floor, margin * minutes) + 1
        assert minutes < request["runtime"] <= 3 * minutes  # within 3x of its estimate
        assert request["gpu"] == 1 and request["mem_mb"] == 24000  # memory as the config gives it
        assert compute.job_resources(full_study, runs, attempt=2)["runtime"] in (
            2 * request["runtime"] - 1,
            2 * request["runtime"],
        )
    tiny_probe = study_config.resolve_run(full_study, "deit_tiny", "cifar10", "linear", 0)
    assert compute.job_resources(full_study, tiny_probe)["runtime"] == floor  # a minute's compute


def test_the_full_studys_requests_follow_its_estimate(full_study):
    estimate = compute.estimate_study(full_study)
    # a job trains 3 seeds; a tuning job (6 families x 3 models x 3 datasets) a run per grid rate
    tuning = 3 * 3 * 6
    assert (estimate.runs, estimate.jobs) == (3 * 3 * 11 * 3 + tuning * 3, 3 * 3 * 11 + tuning)
    assert estimate.tuning_runs == tuning * 3 and 0 < estimate.tuning_flops < 0.1 * estimate.flops
    requested = compute.requested_gpu_hours(full_study)
    floor_hours = estimate.jobs * full_study["resources"]["min_runtime"] / 60
    margin = full_study["resources"]["runtime_margin"]
    assert estimate.gpu_hours < requested <= margin * estimate.gpu_hours + floor_hours + estimate.jobs / 60
    # The old fixed requests (2 to 4 hours per job) came to 990 GPU-hours.
    assert requested < 990 / 5


def test_a_cpu_study_asks_for_its_models_base_times_its_datasets_factors(demo_config):
    config = copy.deepcopy(demo_config)
    config["models"]["deit_small"] = {"img_size": 16, "patch_size": 4, "backbone": {"source": "timm"}}
    config["models"]["deit_tiny"] = {
        "img_size": 16,
        "patch_size": 4,
        "backbone": {"source": "pretrain", "dataset": "glyphs"},
    }
    config["resources"].update(
        default={"mem_mb": 3000, "runtime": 45},
        models={"deit_tiny": {"mem_mb": 2000, "runtime": 10}, "deit_small": {"mem_mb": 2500}},
        datasets={"digits": {"mem_mb": 1.5}, "glyphs": {"runtime": 2.05}},
    )

    def resources(model, dataset, attempt=1):
        run = study_config.resolve_run(config, model, dataset, "lora_r8", 0)
        return compute.job_resources(config, run, attempt)

    assert resources("deit_tiny", "digits") == {"mem_mb": 3000, "runtime": 10, "gpu": 0}
    assert resources("deit_tiny", "glyphs") == {"mem_mb": 2000, "runtime": 21, "gpu": 0}  # 20.5 up
    assert resources("deit_tiny", "cifar10") == {"mem_mb": 2000, "runtime": 10, "gpu": 0}
    assert resources("deit_small", "cifar10") == {"mem_mb": 2500, "runtime": 45, "gpu": 0}  # default's time
    # A retry asks for more memory and time, never more GPUs.
    assert resources("deit_tiny", "glyphs", attempt=2) == {"mem_mb": 4000, "runtime": 41, "gpu": 0}
    pretrain = compute.job_resources(config, study_config.pretrain_run(config, "deit_tiny"))
    assert pretrain == {"mem_mb": 2000, "runtime": 21, "gpu": 0}
    # A job of several seeds asks for their summed time and the largest memory.
    seeds = [study_config.resolve_run(config, "deit_tiny", "glyphs", "lora_r8", s) for s in range(3)]
    assert compute.job_resources(config, seeds) == {"mem_mb": 2000, "runtime": 62, "gpu": 0}  # 61.5 up


def test_the_summary_states_gpu_hours_and_requests_or_that_the_study_runs_on_cpu(full_study, demo_config):
    estimate = compute.estimate_study(full_study)
    line = compute.summary(full_study, estimate)
    assert f"{estimate.gpu_hours:.3g} GPU-hours" in line and "runtime requests add up to" in line
    assert "runs on CPU" in compute.summary(demo_config, compute.estimate_study(demo_config))


def test_measured_rates_replace_the_assumed_throughput_where_they_cover_a_run(full_study, tmp_path):
    """A hand-written compute.throughput_file: deit_small's lora_r8 and full (hence scratch) are
    measured at 224 px with the study's recipe and batch size, its compiled rate is not that of
    the study's eager runs, and every other run keeps the assumption."""
    measured = {
        "device": "Test GPU",
        "img_size": 224,
        "batch_size": 128,
        "recipe": "full",
        "rates": [
            {
                "model": "deit_small",
                "method": "lora_r8",
                "compile": False,
                "precision": "bf16",
                "images_per_s": 1000.0,
            },
            {
                "model": "deit_small",
                "method": "lora_r8",
                "compile": True,
                "precision": "bf16",
                "images_per_s": 9000.0,
            },
            {
                "model": "deit_small",
                "method": "full",
                "compile": False,
                "precision": "bf16",
                "images_per_s": 500.0,
            },
        ],
    }
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(measured))
    config = copy.deepcopy(full_study)
    config["compute"]["throughput_file"] = str(path)
    lora = study_config.resolve_run(config, "deit_small", "cifar10", "lora_r8", 0)
    sizes = split_sizes(config["datasets"]["cifar10"])
    image = compute.image_flops(lora.model, lora.method, sizes["classes"])
    seconds = compute.estimated_flops(config, lora) / (1000.0 * (image.forward + image.backward))
    assert compute.run_hours(config, lora, compute.measured_rates(config)) == pytest.approx(seconds / 3600)
    # the training passes alone take train images x epochs / rate; evaluation adds under a tenth
    assert seconds == pytest.approx(sizes["train"] * lora.train.epochs / 1000.0, rel=0.1)
    margin = config["resources"]["runtime_margin"]
    assert compute.job_resources(config, [lora])["runtime"] == math.ceil(margin * seconds / 60)
    scratch = study_config.resolve_run(config, "deit_small", "cifar10", "scratch", 0)
    assert compute.measured_images_per_s(compute.measured_rates(config), scratch) == 500.0
    other = study_config.resolve_run(config, "deit_tiny", "cifar10", "lora_r8", 0)
    assert compute.run_hours(config, other, compute.measured_rates(config)) == pytest.approx(
        compute.gpu_hours(config, compute.estimated_flops(config, other))
    )
    estimate = compute.estimate_study(config)
    # deit_small's lora_r8 and full runs (3 datasets x 3 seeds each; the full study has no scratch),
    # and the lora and full tuning runs that train them (3 datasets x 3 rates each)
    assert estimate.measured_runs == 2 * 3 * 3 + 2 * 3 * 3 and estimate.measured_on == "Test GPU"
    line = compute.summary(config, estimate)
    assert (
        f"the images/s measured on Test GPU with the full study's recipe (compute.throughput_file {path}) "
        "for 36 of the 459 runs" in line
    )
    assert "a sustained 250 TFLOP/s per GPU (compute.gpu_tflops) for the others" in line
    # Measured at another batch size, or with another study's recipe (or none), it covers no run.
    for other in ({"batch_size": 64}, {"recipe": "vtab"}, {"recipe": None}):
        path.write_text(json.dumps({k: v for k, v in (measured | other).items() if v is not None}))
        estimate = compute.estimate_study(config)
        assert estimate.measured_runs == 0
        assert compute.run_hours(config, lora, compute.measured_rates(config)) == pytest.approx(
            compute.gpu_hours(config, compute.estimated_flops(config, lora))
        )
    assert "measures none of its runs' model, method, input size, batch size" in compute.summary(
        config, estimate
    )
    assert "(it was measured with 'plain')" in compute.summary(config, estimate)


def test_a_run_takes_the_rate_measured_at_its_compilation_and_precision(full_study, tmp_path):
    """``auto`` takes the rate at the precision auto picked on the measured device; an explicit
    precision, or torch.compile, takes its own rate or none (then the assumed TFLOP/s)."""

    def rate(compiled: bool, precision: str, images_per_s: float) -> dict:
        return {"model": "deit_small", "method": "lora_r8", "compile": compiled, "precision": precision,
                "images_per_s": images_per_s}  # fmt: skip

    measured = {
        "device": "Test GPU",
        "img_size": 224,
        "batch_size": 128,
        "auto_precision": "bf16",
        "rates": [rate(False, "bf16", 1000.0), rate(True, "bf16", 3000.0), rate(False, "fp16", 800.0),
                  rate(False, "fp32", 200.0)],
    }  # fmt: skip
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(measured))
    run = study_config.resolve_run(full_study, "deit_small", "cifar10", "lora_r8", 0)
    assert (run.train.compile, run.train.precision) == (False, "auto")

    def images_per_s(compiled: bool, precision: str) -> float | None:
        trained = dataclasses.replace(run.train, compile=compiled, precision=precision)
        return compute.measured_images_per_s(
            compute.MeasuredRates.read(str(path)), dataclasses.replace(run, train=trained)
        )

    assert images_per_s(False, "auto") == images_per_s(False, "bf16") == 1000.0
    assert images_per_s(True, "auto") == 3000.0
    assert images_per_s(False, "fp16") == 800.0 and images_per_s(False, "fp32") == 200.0
    assert images_per_s(True, "fp16") is None
    # A file without auto_precision was measured at auto only: its one precision is auto's.
    del measured["auto_precision"]
    path.write_text(json.dumps({**measured, "rates": measured["rates"][:2]}))
    assert images_per_s(False, "auto") == 1000.0 and images_per_s(True, "auto") == 3000.0
    path.write_text(json.dumps(measured))  # several precisions: which one auto is, is unknown
    assert images_per_s(False, "auto") is None and images_per_s(False, "fp16") == 800.0


def test_a_throughput_file_that_is_not_one_is_refused_naming_the_key(full_study, tmp_path):
    (tmp_path / "rates.json").write_text('{"device": "GPU", "rates": []}')
    rate = {
        "model": "deit_small",
        "method": "full",
        "compile": False,
        "precision": "bf16",
        "images_per_s": 1.0,
    }
    twice = {
        "device": "GPU",
        "img_size": 224,
        "batch_size": 128,
        "rates": [rate, rate | {"images_per_s": 2.0}],
    }
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    for path in (tmp_path / "absent.json", tmp_path / "rates.json", tmp_path / "twice.json"):
        config = copy.deepcopy(full_study)
        config["compute"]["throughput_file"] = str(path)
        with pytest.raises(
            study_config.ConfigError, match=f"compute.throughput_file: '{path}' is not a readable"
        ) as refused:
            compute.estimate_study(config)
    assert "measured twice: ('deit_small', 'full', False, 'bf16')" in str(refused.value)
