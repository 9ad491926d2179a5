import contextlib
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare
from torch import nn

from vitpeft.config import RunConfig, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.io import read_json
from vitpeft.models import create_model
from vitpeft.train import Split, evaluate, fit, param_groups, warmup_cosine


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_param_groups_hold_only_trainable_and_skip_decay_on_norms_and_tokens(tiny_model):
    model = prepare(tiny_model, "lora_r4").model
    decay, no_decay = param_groups(model, 0.05)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in decay["params"] + no_decay["params"]} == trainable
    assert all(p.ndim == 2 for p in decay["params"])
    full = prepare(tiny_model, "full").model
    no_decay_ids = {id(p) for p in param_groups(full, 0.05)[1]["params"]}
    assert id(full.pos_embed) in no_decay_ids and id(full.cls_token) in no_decay_ids


def test_evaluate_counts_top1_and_top5():
    class Fixed(nn.Module):
        def forward(self, x):  # class 0 first, then 1..9 in order, for every image
            return torch.linspace(1, 0, 10).expand(len(x), -1)

    labels = torch.tensor([0, 3, 7, 0])
    split = Split(torch.zeros(4, 8, 8, 1, dtype=torch.uint8), labels)
    result = evaluate(Fixed(), split, BatchPreprocessor(8, (0,) * 3, (1,) * 3), batch_size=3)
    assert result["top1"] == 50.0 and result["top5"] == 75.0


def test_evaluate_runs_in_exact_fp32_on_its_split_device(monkeypatch):
    """On CUDA that keeps cuDNN from convolving in TF32 (tests/test_device.py)."""
    from vitpeft import device as devices

    class Recorded(nn.Module):
        def forward(self, x):
            entered.append("forward")
            return torch.zeros(len(x), 10)

    entered = []

    @contextlib.contextmanager
    def exact_fp32(device):
        entered.append(device)
        yield

    monkeypatch.setattr(devices, "exact_fp32", exact_fp32)
    split = Split(torch.zeros(4, 8, 8, 1, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    evaluate(Recorded(), split, BatchPreprocessor(8, (0,) * 3, (1,) * 3), batch_size=2)
    assert entered == [torch.device("cpu"), "forward", "forward"]


def test_the_training_steps_never_wait_for_the_device(tiny_spec, monkeypatch):
    """Reading a tensor on the host (``.item()``, ``bool``, ``int``, ``float``) waits for a GPU to
    finish all it was given, and it can then not be given the next step ahead. Our code reads the
    running loss only at the progress bar's refreshes (none here), before a resume state and at an
    epoch's end: as often in 4 steps as in 8."""
    import traceback

    from vitpeft import train as training

    monkeypatch.setattr(training, "SHOW_EVERY_S", math.inf)
    reads, package = [], str(Path(training.__file__).parent) + os.sep

    def counting(read):
        def counted(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0].filename
            if caller.startswith(package):
                reads.append(caller)
            return read(self, *args, **kwargs)

        return counted

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    counts = []
    for images in (32, 64):
        torch.manual_seed(0)
        method = prepare(create_model(tiny_spec, num_classes=10), "lora_r4")
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.integers(0, 256, (images, 16, 16, 3)).astype(np.uint8))
        split = Split(x, torch.from_numpy(rng.integers(0, 10, images)))
        reads.clear()
        cfg = TrainConfig(epochs=1, batch_size=8, accumulation_steps=2)
        fit(
            method,
            split,
            Split(x[:8], split.labels[:8]),
            BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3),
            cfg,
            1e-3,
            0.0,
            0,
        )
        counts.append(len(reads))
    assert counts[0] == counts[1] > 0


def test_fit_learns_a_separable_problem(tiny_model):
    # Class = dark or bright noisy image: learnable in a few steps, so the loop is what is tested.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    images = (rng.integers(0, 100, (256, 16, 16, 1)) + 120 * labels[:, None, None, None]).astype(np.uint8)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels))
    tiny_model.reset_classifier(2)
    method = prepare(tiny_model, "full")
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    history = fit(method, split, split, prep, TrainConfig(epochs=3, batch_size=32), 1e-3, 0.0, seed=0)
    assert history.val_top1[-1] == 100.0
    assert history.train_loss[-1] < history.train_loss[0]


def test_train_run_writes_every_required_output(tmp_path, tiny_config):
    from vitpeft import config as study_config
    from vitpeft.data import prepare_dataset
    from vitpeft.runs import train_run

    prepare_dataset(tiny_config["datasets"]["digits"], tmp_path / "data")
    run = study_config.resolve_run(tiny_config, "deit_tiny", "digits", "scratch", 0).to_dict()
    metrics = train_run(run, tmp_path / "data", None, tmp_path / "run", threads=1)
    on_disk = read_json(tmp_path / "run" / "metrics.json")
    assert on_disk == metrics
    required = {
        "test_top1",
        "test_top5",
        "val_top1",
        "trainable_params",
        "total_params",
        "train_time_s",
        "peak_mem_mb",
        "train_peak_mem_mb",
        "eval_peak_mem_mb",
        "epochs",
        "seed",
        "method",
        "model",
        "dataset",
        "curves",
    }
    assert required <= set(on_disk)
    assert 0.0 <= on_disk["test_top1"] <= on_disk["test_top5"] <= 100.0
    assert len(on_disk["curves"]["val_top1"]) == on_disk["epochs"] == 2
    # judged by the default criterion (3-epoch window): too few epochs to have converged
    assert on_disk["converged"] is False and on_disk["val_top1_gain_last_window"] is None
    assert (on_disk["convergence_window"], on_disk["convergence_tolerance"]) == (3, 1.0)
    # the process's peak covers setup and both phases; each phase's peak is its own
    assert 0 < on_disk["train_peak_mem_mb"] <= on_disk["peak_mem_mb"]
    assert 0 < on_disk["eval_peak_mem_mb"] <= on_disk["peak_mem_mb"]
    saved = RunConfig.from_dict(read_json(tmp_path / "run" / "config.json"))
    assert saved == RunConfig.from_dict(run)
    provenance = read_json(tmp_path / "run" / "provenance.json")
    assert provenance["packages"]["torch"] and "hardware" in provenance
    assert (tmp_path / "run" / "checkpoint.safetensors").stat().st_size > 0


def test_gradient_accumulation_matches_the_full_batch(tiny_spec):
    from vitpeft.models import create_model

    # One optimizer step from the same weights: the accumulated gradient must equal the full
    # batch's. (Weights after AdamW would amplify float round-off where gradients are near zero.)
    rng = np.random.default_rng(1)
    split = Split(
        torch.from_numpy(rng.integers(0, 256, (32, 8, 8, 1)).astype(np.uint8)),
        torch.from_numpy(rng.integers(0, 10, 32)),
    )
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    grads = []
    for accumulation in (1, 4):
        torch.manual_seed(0)
        method = prepare(create_model(tiny_spec, num_classes=10), "full")
        model = method.model  # the step's gradients, read where methods read them (fit then frees them)
        method = dataclasses.replace(
            method,
            after_step=lambda step, skipped, model=model: grads.append(
                torch.cat([p.grad.flatten() for p in model.parameters()])
            ),
        )
        cfg = TrainConfig(
            epochs=1, batch_size=32, accumulation_steps=accumulation, warmup_epochs=0, grad_clip=0
        )
        fit(method, split, split, prep, cfg, 1e-3, 0.05, seed=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_fit_with_randaugment_and_mixup(tiny_model):
    from vitpeft.config import AugmentConfig

    rng = np.random.default_rng(2)
    split = Split(
        torch.from_numpy(rng.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8)),
        torch.from_numpy(rng.integers(0, 10, 64)),
    )
    augment = AugmentConfig(scale=(0.8, 1.0), translate=0.1, hflip=True, randaugment=True, mixup_alpha=0.2)
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, augment, num_classes=10)
    history = fit(
        prepare(tiny_model, "lora_r4"),
        split,
        split,
        prep,
        TrainConfig(epochs=2, batch_size=16),
        1e-3,
        0.0,
        seed=0,
    )
    assert all(np.isfinite(history.train_loss)) and len(history.val_top1) == 2


def test_compiled_training_follows_eager_training(tiny_spec):
    """torch.compile (inductor, here on CPU) trains the same parameters to the same losses, the
    model's forward in whole graphs (a graph break would run its pieces eagerly between them)."""
    from torch._dynamo.utils import counters

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = (rng.integers(0, 100, (64, 16, 16, 1)) + 120 * labels[:, None, None, None]).astype(np.uint8)
    split = Split(torch.from_numpy(images), torch.from_numpy(labels))
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        counters.clear()
        method = prepare(create_model(tiny_spec, num_classes=2), "lora_r4")
        cfg = TrainConfig(epochs=1, batch_size=32, compile=compiled)
        history = fit(method, split, split, prep, cfg, 1e-3, 0.0, seed=0)
        results[compiled] = (history.train_loss, dict(method.model.named_parameters()))
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    assert results[True][1].keys() == results[False][1].keys()  # no "_orig_mod." wrapper in the names
    for name, param in results[True][1].items():
        torch.testing.assert_close(param, results[False][1][name], rtol=1e-4, atol=1e-5)


def test_the_weight_average_is_validated_and_becomes_the_final_weights(tiny_spec):

    rng = np.random.default_rng(3)
    split = Split(
        torch.from_numpy(rng.integers(0, 256, (48, 8, 8, 3)).astype(np.uint8)),
        torch.from_numpy(rng.integers(0, 10, 48)),
    )
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    cfg, decay = TrainConfig(epochs=2, batch_size=16), 0.8

    def trainable(method):
        return {n: p.detach().clone() for n, p in method.model.named_parameters() if p.requires_grad}

    # The same training without the average, its weights recorded after every optimizer step.
    torch.manual_seed(0)
    plain = prepare(create_model(tiny_spec, num_classes=10), "lora_r4")
    average, steps = trainable(plain), []
    plain = dataclasses.replace(plain, after_step=lambda step, skipped: steps.append(trainable(plain)))
    plain_history = fit(plain, split, split, prep, cfg, 1e-2, 0.05, seed=0)
    for weights in steps:  # ema <- decay * ema + (1 - decay) * weights, from the initial weights
        average = {n: decay * average[n] + (1 - decay) * weights[n] for n in average}

    torch.manual_seed(0)
    averaged = prepare(create_model(tiny_spec, num_classes=10), "lora_r4")
    history = fit(averaged, split, split, prep, cfg, 1e-2, 0.05, seed=0, ema_decay=decay)
    assert history.train_loss == plain_history.train_loss  # the average does not steer training
    final = trainable(averaged)
    assert final.keys() == average.keys() and len(steps) == 6
    for name in final:
        torch.testing.assert_close(final[name], average[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(final[n], steps[-1][n]) for n in final)  # not the last step's
    # What the last epoch validated is what the model now holds.
    again = evaluate(averaged.model, split, prep, cfg.eval_batch_size)
    assert (history.val_top1[-1], history.val_loss[-1]) == (again["top1"], again["loss"])
    assert history.val_loss != plain_history.val_loss


def test_drop_path_reaches_the_timm_model_and_adds_no_weights(tiny_config, tiny_spec):
    import dataclasses

    from timm.layers import DropPath

    from vitpeft import config as study_config
    from vitpeft.runs import build_model

    tiny_config["train"]["drop_path_rate"] = 0.2
    run = study_config.resolve_run(tiny_config, "deit_tiny", "digits", "scratch", 0)
    assert run.train.drop_path_rate == 0.2
    model = build_model(run, num_classes=10, backbone=None)
    first, last = model.blocks[0].drop_path1, model.blocks[-1].drop_path1
    assert not isinstance(first, DropPath)  # rate 0 at the first block: timm's linear rule over depth
    assert isinstance(last, DropPath) and last.drop_prob == pytest.approx(0.2)
    plain = build_model(
        dataclasses.replace(run, train=dataclasses.replace(run.train, drop_path_rate=0.0)), 10, None
    )
    assert not isinstance(plain.blocks[-1].drop_path1, DropPath)
    assert plain.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(
        8, 3, tiny_config["models"]["deit_tiny"]["img_size"], tiny_config["models"]["deit_tiny"]["img_size"]
    )
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))  # branches dropped at random while training
    model.eval()
    torch.testing.assert_close(model(x), model(x))
