"""Gradient stability records: the meter on crafted numbers, and the trainer's records against the
gradients it stepped with, through a kill and a resume."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import prepare
from torch import nn

from vitpeft.config import TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.methods import method_config
from vitpeft.models import create_model
from vitpeft.resume import ResumeFile
from vitpeft.stability import SPIKE_FACTOR, SPIKE_MIN_RISE, SPIKE_WINDOW, StabilityMeter
from vitpeft.train import Split, fit, warmup_cosine

BATCH, IMAGES, EPOCHS = 8, 64, 3  # 8 steps per epoch, 24 in all
SPIKE_STEP = 20  # in epoch 3, after the spike window (16 steps) is full


def test_the_meter_counts_clipped_steps_and_spiking_or_non_finite_losses_per_epoch():
    meter = StabilityMeter(torch.device("cpu"), grad_clip=1.0, num_classes=10)
    norms = [0.5, 2.0, 1.0, 3.0] + [0.5] * (SPIKE_WINDOW - 4)
    for i, norm in enumerate(norms):  # fill the window; nothing is judged yet, however large
        meter.record(torch.tensor(100.0 if i == 0 else 1.0), torch.tensor(norm))
    first = meter.epoch_summary()
    assert first == {
        "grad_norm_mean": pytest.approx(sum(norms) / SPIKE_WINDOW),
        "grad_norm_max": 3.0,
        "clipped_fraction": 2 / SPIKE_WINDOW,  # 2.0 and 3.0; 1.0 is at the threshold, not above it
        "loss_spikes": 0,
        "skipped_steps": 0,
    }
    # The window's median is 1.0: at SPIKE_FACTOR times it a loss is not a spike, above it it is.
    losses = [SPIKE_FACTOR, SPIKE_FACTOR + 0.01, math.nan, math.inf, 1.0]
    for loss in losses:
        meter.record(torch.tensor(loss), torch.tensor(0.25))
    assert meter.epoch_summary() == {
        "grad_norm_mean": 0.25,
        "grad_norm_max": 0.25,
        "clipped_fraction": 0.0,
        "loss_spikes": 3,
        "skipped_steps": 0,
    }


def test_late_in_training_a_small_loss_tripling_is_not_a_spike_unless_it_rises_by_a_tenth_of_chance():
    """At a loss of 0.02, one confidently wrong image in a batch triples it: batch noise, which
    the ratio alone counted as a spike in 5 to 9 of the demo's 17 steps per epoch."""
    classes = 10
    rise = SPIKE_MIN_RISE * math.log(classes)  # 0.23 nats
    meter = StabilityMeter(torch.device("cpu"), grad_clip=0.0, num_classes=classes)
    for _ in range(SPIKE_WINDOW):
        meter.record(torch.tensor(0.02), torch.tensor(1.0))
    meter.epoch_summary()
    for loss in [0.08, 0.02 + rise - 0.01, 0.02 + rise + 0.01]:  # 4x, 12x, 13x the median
        meter.record(torch.tensor(loss), torch.tensor(1.0))
    assert meter.epoch_summary()["loss_spikes"] == 1


def test_without_clipping_no_step_counts_as_clipped():
    meter = StabilityMeter(torch.device("cpu"), grad_clip=0.0, num_classes=10)
    meter.record(torch.tensor(1.0), torch.tensor(1e6))
    assert meter.epoch_summary()["clipped_fraction"] == 0.0


class SpikeAt(nn.Module):
    """The model, except that its ``at``-th training forward pass adds 100 to class 0's logit:
    the loss of every image of another class jumps by about 100, its gradient stays bounded."""

    def __init__(self, model: nn.Module, at: int):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        logits = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return logits + torch.nn.functional.one_hot(torch.tensor(0), logits.shape[1]) * 100.0
        return logits


class Killed(Exception):
    pass


def run(tiny_spec, grad_clip, resume=None, kill_at=None):
    """Train LoRA on random data; returns the history and the global norm of the gradient each
    step was taken with (after clipping, read back once the optimizer has stepped)."""
    torch.manual_seed(0)
    method = prepare(create_model(tiny_spec, num_classes=10), "lora_r4", total_steps=EPOCHS * IMAGES // BATCH)
    # The spike counts forward passes from the start of the run: a resumed run starts counting
    # where its state was saved.
    skipped = resume.load()["position"]["global_step"] if resume and resume.path.exists() else 0
    method = dataclasses.replace(method, model=SpikeAt(method.model, SPIKE_STEP - skipped))
    stepped_norms = []

    def after_step(step, skipped):
        grads = [p.grad for p in method.model.parameters() if p.grad is not None]
        stepped_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        if step == kill_at:
            raise Killed

    method = dataclasses.replace(method, after_step=after_step)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (IMAGES, 8, 8, 3)).astype(np.uint8))
    train = Split(images, torch.from_numpy(rng.integers(0, 10, IMAGES)))
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, warmup_epochs=0.5, grad_clip=grad_clip)
    preprocess = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    history = fit(
        method, train, Split(images[:16], train.labels[:16]), preprocess, cfg, 1e-2, 0.0, 0, resume=resume
    )
    return history, stepped_norms


def per_epoch(values):
    steps = IMAGES // BATCH
    return [values[i : i + steps] for i in range(0, len(values), steps)]


def test_fit_records_the_gradient_norms_it_stepped_with_and_the_spike(tiny_spec):
    history, norms = run(tiny_spec, grad_clip=0.0)
    epochs = per_epoch(norms)
    assert history.grad_norm_mean == pytest.approx([np.mean(e) for e in epochs], rel=1e-5)
    assert history.grad_norm_max == pytest.approx([max(e) for e in epochs], rel=1e-5)
    assert history.clipped_fraction == [0.0] * EPOCHS
    assert history.loss_spikes == [0, 0, 1]


def test_fit_counts_the_steps_it_clipped(tiny_spec):
    # A threshold within the range of the unclipped norms, so that some steps are clipped and some not.
    clip = float(np.median(run(tiny_spec, grad_clip=0.0)[1]))
    history, stepped = run(tiny_spec, grad_clip=clip)
    # A clipped step's gradient was scaled to the threshold (less clip_grad_norm_'s 1e-6 guard).
    clipped = [[n > clip * (1 - 1e-4) for n in epoch] for epoch in per_epoch(stepped)]
    assert history.clipped_fraction == [np.mean(c) for c in clipped]
    assert 0 < np.mean(sum(clipped, [])) < 1


def test_a_fit_killed_mid_epoch_after_the_window_filled_records_what_an_uninterrupted_one_does(
    tmp_path, tiny_spec
):
    expected, _ = run(tiny_spec, grad_clip=1.0)
    resume = ResumeFile(tmp_path / "resume.pt", every=6, key="run")
    with pytest.raises(Killed):
        run(tiny_spec, 1.0, resume, kill_at=SPIKE_STEP - 1)  # saved at step 18, mid epoch 3
    assert torch.load(resume.path, weights_only=True)["position"]["step"] == 2
    resumed, _ = run(tiny_spec, 1.0, ResumeFile(resume.path, every=6, key="run"))
    assert resumed == expected
    assert resumed.loss_spikes == [0, 0, 1]


def train_at(tiny_spec, precision, grad_clip=1.0, method="full"):
    torch.manual_seed(0)
    method = prepare(create_model(tiny_spec, num_classes=10), method, total_steps=2 * IMAGES // BATCH)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (IMAGES, 16, 16, 3)).astype(np.uint8))
    train = Split(images, torch.from_numpy(rng.integers(0, 10, IMAGES)))
    cfg = TrainConfig(epochs=2, batch_size=BATCH, grad_clip=grad_clip, precision=precision)
    preprocess = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    return fit(method, train, Split(images[:16], train.labels[:16]), preprocess, cfg, 1e-3, 0.0, 0)


def test_fp16_skips_overflowing_steps_and_records_and_clips_the_unscaled_gradients(tiny_spec):
    """CPU autocast in fp16 with torch's GradScaler: its first scale (2**16) overflows fp16's
    backward, so those steps are skipped and counted, not a divergence; the norm recorded (and
    clipped) is the true one, as in fp32, not 2**16 times it."""
    fp32, fp16 = train_at(tiny_spec, "fp32"), train_at(tiny_spec, "fp16")
    assert fp32.skipped_steps == [0, 0]
    assert fp16.skipped_steps[0] >= 1 and sum(fp16.skipped_steps) < 2 * IMAGES // BATCH
    assert all(math.isfinite(n) for n in fp16.grad_norm_mean + fp16.grad_norm_max + fp16.train_loss)
    assert fp16.grad_norm_mean == pytest.approx(fp32.grad_norm_mean, rel=0.5)
    assert fp16.clipped_fraction == pytest.approx(fp32.clipped_fraction, abs=0.35)
    assert fp16.train_loss[-1] < fp16.train_loss[0]


def test_the_lr_schedule_moves_on_the_fp16_steps_taken_not_the_skipped_ones(tiny_spec):
    history = train_at(tiny_spec, "fp16")
    per_epoch, skipped = IMAGES // BATCH, np.cumsum(history.skipped_steps)
    assert skipped[0] >= 1
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = warmup_cosine(reference, round(TrainConfig().warmup_epochs * per_epoch), 2 * per_epoch)
    taken = [0]
    for epoch in (1, 2):
        while taken[0] < epoch * per_epoch - skipped[epoch - 1]:
            reference.step()
            schedule.step()
            taken[0] += 1
        assert history.lr[epoch - 1] == pytest.approx(reference.param_groups[0]["lr"], rel=1e-12)


def test_adalora_keeps_finite_importance_scores_through_skipped_fp16_steps_and_meets_its_budget(tiny_spec):
    """A skipped step's gradients are inf or NaN; had they reached peft's importance scores, these
    would stay NaN, no rank would be pruned, and the run would end above its rank budget."""
    fp32, fp16 = (
        train_at(tiny_spec, "fp32", method="adalora_r2"),
        train_at(tiny_spec, "fp16", method="adalora_r2"),
    )
    assert sum(fp16.skipped_steps) >= 1
    ranks = fp32.records[-1]["adalora_ranks"]
    budget = sum(ranks.values())
    assert budget < method_config("adalora_r2").init_r * len(ranks)  # fp32 pruned to its budget
    assert sum(fp16.records[-1]["adalora_ranks"].values()) == budget


def test_bf16_on_the_cpu_trains_under_autocast_without_a_scaler(tiny_spec):
    history = train_at(tiny_spec, "bf16")
    assert history.skipped_steps == [0, 0] and all(math.isfinite(x) for x in history.train_loss)


def test_recording_a_step_makes_no_tensor_from_host_values(monkeypatch):
    """On a GPU, a tensor made from a Python value (``skipped``) would be copied there each step,
    and the host would wait for that copy."""
    meter = StabilityMeter(torch.device("cpu"), grad_clip=1.0, num_classes=10)
    loss, norm = torch.tensor(2.0), torch.tensor(0.5)

    def refused(*args, **kwargs):
        raise AssertionError("a tensor made from host values while recording a step")

    monkeypatch.setattr(torch, "as_tensor", refused)
    monkeypatch.setattr(torch, "tensor", refused)
    for skipped in (False, True, False):
        meter.record(loss, norm, skipped=skipped)
    assert meter.epoch_summary()["skipped_steps"] == 1


def test_a_skipped_step_is_counted_and_left_out_of_the_norm_statistics():
    meter = StabilityMeter(torch.device("cpu"), grad_clip=1.0, num_classes=10)
    meter.record(torch.tensor(2.0), torch.tensor(float("inf")), skipped=torch.tensor(True))
    meter.record(torch.tensor(2.0), torch.tensor(0.5))
    meter.record(torch.tensor(2.0), torch.tensor(3.0))
    summary = meter.epoch_summary()
    assert summary["skipped_steps"] == 1
    assert (summary["grad_norm_mean"], summary["grad_norm_max"], summary["clipped_fraction"]) == (
        1.75,
        3.0,
        0.5,
    )
