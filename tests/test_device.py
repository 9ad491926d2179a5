"""The training device: selection (with torch's availability checks patched), what each device
trains with, the refusal at load of a method a device cannot run, and CPU runs as before."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, prepare

from vitpeft import compute
from vitpeft import config as study_config
from vitpeft import device as devices
from vitpeft.config import ConfigError, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.train import Split, fit


def available(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "picked"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, picked):
    available(monkeypatch, cuda, mps)
    assert devices.select("auto") == torch.device(picked)
    assert devices.select("cpu") == torch.device("cpu")  # whatever else there is


@pytest.mark.parametrize("requested", ["cuda", "mps"])
def test_a_requested_device_that_is_missing_is_an_error(monkeypatch, requested):
    available(monkeypatch, cuda=False, mps=False)
    with pytest.raises(RuntimeError, match=f"device: '{requested}' is not available"):
        devices.select(requested)
    available(monkeypatch, cuda=True, mps=True)
    assert devices.select(requested) == torch.device(requested)


def test_autocast_is_bf16_on_cuda_and_on_mps_only_where_mps_has_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert devices.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    assert devices.autocast_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: major <= 14)
    assert devices.autocast_dtype(torch.device("mps")) == torch.bfloat16
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: major <= 13)
    assert devices.autocast_dtype(torch.device("mps")) is None  # fp32, not fp16 without a scaler


def test_auto_precision_is_fp16_with_a_scaler_on_a_cuda_gpu_without_bf16(monkeypatch):
    """A T4 or V100: bf16 would run emulated or not at all, so auto picks fp16 and torch's
    GradScaler; a GPU with bf16 gets bf16 and no scaler; an explicit precision is kept."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    assert devices.training_precision(cuda) == "fp16" and devices.autocast_dtype(cuda) == torch.float16
    assert devices.grad_scaler(cuda).is_enabled()
    assert "autocast fp16 with a gradient scaler" in devices.describe(cuda)
    # torch's default counts emulated bf16, which a T4 or V100 has: still fp16 there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert devices.training_precision(cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert devices.training_precision(cuda) == "bf16" and not devices.grad_scaler(cuda).is_enabled()
    assert devices.training_precision(cuda, "fp32") == "fp32" and devices.autocast_dtype(cuda, "fp32") is None
    cpu = torch.device("cpu")
    assert devices.training_precision(cpu) == "fp32" and devices.training_precision(cpu, "fp16") == "fp16"
    assert devices.grad_scaler(cpu, "fp16").is_enabled() and not devices.grad_scaler(cpu, "bf16").is_enabled()
    with pytest.raises(ValueError, match="train.precision must be one of"):
        devices.training_precision(cpu, "fp8")


def test_fused_adamw_where_torch_has_it_but_not_on_the_cpu():
    assert devices.fused_adamw(torch.device("cuda")) and devices.fused_adamw(torch.device("mps"))
    assert not devices.fused_adamw(torch.device("cpu"))


def test_auto_may_pick_mps_only_on_apple_silicon():
    assert devices.candidates("auto", system="Darwin", machine="arm64") == ("mps", "cpu")
    assert devices.candidates("auto", system="Linux", machine="x86_64") == ("cuda", "cpu")
    assert devices.candidates("mps", system="Linux", machine="x86_64") == ("mps",)


def test_the_mps_fallback_is_set_before_torch_is_imported(tmp_path):
    script = (
        "import os, sys\n"
        "from vitpeft.device import enable_mps_fallback\n"
        "assert enable_mps_fallback('mps') and 'torch' not in sys.modules\n"
        "import torch\n"
        "print(os.environ['PYTORCH_ENABLE_MPS_FALLBACK'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != devices.MPS_FALLBACK}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout == "1\n"


def test_the_mps_fallback_cannot_be_set_once_torch_is_imported(monkeypatch):
    monkeypatch.delenv(devices.MPS_FALLBACK, raising=False)
    with pytest.raises(RuntimeError, match="before torch is imported"):
        devices.enable_mps_fallback("mps")
    assert not devices.enable_mps_fallback("cpu")  # nothing to set for a CPU job


def config_with(**top):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["studies"]["demo"]["methods"] = ["lora_r8", "qlora8_r8", "qlora4_r8", "qalora4_r8"]
    config.update(top)
    return config


def test_bitsandbytes_methods_are_refused_on_mps_with_an_older_bitsandbytes(monkeypatch):
    monkeypatch.setattr(devices.metadata, "version", lambda name: "0.49.1")
    with pytest.raises(
        ConfigError, match=r"^device: 'mps': method 'qlora8_r8' cannot train on mps: .*>= 0\.50"
    ):
        study_config.load(config_with(device="mps"))
    monkeypatch.setattr(devices.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(devices.platform, "machine", lambda: "arm64")
    with pytest.raises(ConfigError, match=r"^device: 'auto' \(which may pick mps here\): method 'qlora8_r8'"):
        study_config.load(config_with(device="auto"))
    study_config.load(config_with(device="cpu"))  # bitsandbytes runs on the CPU
    # QA-LoRA is pure torch: it runs everywhere
    qalora_only = config_with(device="mps")
    qalora_only["studies"]["demo"]["methods"] = ["qalora4_r8"]
    study_config.load(qalora_only)


def test_the_pinned_bitsandbytes_runs_every_method_on_every_device():
    for device in devices.DEVICES:
        study_config.load(config_with(device=device))


def test_a_target_with_an_unknown_name_is_refused_naming_what_is_known(monkeypatch):
    config = study_config.load(config_with())
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'cifar11'; the datasets section defines \['cifar10'"
    ):
        study_config.check_target_names(config, dataset="cifar11", method="lora_r8")
    with pytest.raises(
        ConfigError, match=r"unknown model 'vit_giant'; the models section defines \['vit_w64_d4'\]"
    ):
        study_config.check_target_names(config, model="vit_giant")
    with pytest.raises(ConfigError, match="method 'dora_r8': unknown method 'dora_r8'; the known forms are"):
        study_config.check_target_names(config, method="dora_r8")
    study_config.check_target_names(config, dataset="cifar10", model="vit_w64_d4", method="lora_r32")
    monkeypatch.setattr(devices.metadata, "version", lambda name: "0.49.1")
    config["device"] = "mps"
    with pytest.raises(ConfigError, match="method 'qlora4_r16' cannot train on mps"):
        study_config.check_target_names(config, method="qlora4_r16")  # not in the study: checked here


def test_the_device_key_is_validated():
    with pytest.raises(ConfigError, match="device"):
        study_config.load(config_with(device="gpu"))
    assert study_config.load(config_with())["device"] == "auto"


def test_only_jobs_that_may_train_on_cuda_book_a_gpu():
    config = study_config.load(config_with())
    config["resources"]["gpu"] = 1
    run = study_config.resolve_run(config, "vit_w64_d4", "digits", "lora_r8", 0)
    for device, gpus in [("auto", 1), ("cuda", 1), ("mps", 0), ("cpu", 0)]:
        config["device"] = device
        assert compute.job_resources(config, run)["gpu"] == gpus


def test_a_cpu_run_trains_as_before_fp32_and_the_reference_adamw(monkeypatch, tiny_model):
    fused = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            fused.append(kwargs.get("fused"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    dtypes = []
    tiny_model.head.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (64, 16, 16, 1), dtype=np.uint8))
    split = Split(images, torch.from_numpy(rng.integers(0, 10, 64)))
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    fit(
        prepare(tiny_model, "lora_r4"), split, split, prep, TrainConfig(epochs=1, batch_size=32), 1e-3, 0.0, 0
    )
    assert fused == [False]
    assert dtypes and set(dtypes) == {torch.float32}


def test_a_run_records_the_device_it_used(tmp_path, tiny_config, capsys):
    from vitpeft.data import prepare_dataset
    from vitpeft.io import read_json
    from vitpeft.runs import train_run

    prepare_dataset(tiny_config["datasets"]["digits"], tmp_path / "data")
    run = study_config.resolve_run(tiny_config, "deit_tiny", "digits", "scratch", 0).to_dict()
    train_run(run, tmp_path / "data", None, tmp_path / "run", threads=1, device="cpu")
    provenance = read_json(tmp_path / "run" / "provenance.json")
    assert (provenance["device"], provenance["device_requested"]) == ("cpu", "cpu")
    assert (provenance["precision"], provenance["precision_requested"]) == ("fp32", "auto")
    assert (
        "device cpu: fp32, AdamW reference loop (config device: cpu, train.precision: auto)"
        in capsys.readouterr().err
    )


def test_fp32_work_stays_fp32_on_cuda_where_cudnn_would_convolve_in_tf32():
    cudnn = torch.backends.cudnn
    before = (cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark, cudnn.deterministic)
    with devices.exact_fp32(torch.device("cuda")):
        assert not cudnn.allow_tf32 and (cudnn.enabled, cudnn.benchmark, cudnn.deterministic) == before[1:]
    assert (cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark, cudnn.deterministic) == before
    with devices.exact_fp32(torch.device("cpu")):
        assert cudnn.allow_tf32 == before[0]


def test_host_to_device_queues_a_copy_from_pinned_memory_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(
        torch.Tensor, "to", lambda self, *args, **kwargs: calls.append((args, kwargs)) or self
    )
    cuda = torch.device("cuda")
    devices.host_to_device(torch.zeros(3), cuda)
    assert calls == ["pin", ((cuda,), {"non_blocking": True})]
    calls.clear()
    devices.host_to_device(torch.zeros(3), torch.device("cpu"))
    assert calls == [((torch.device("cpu"),), {})]
