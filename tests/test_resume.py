"""Resumable training, out-of-memory backoff and the stop on a non-finite loss, on tiny models."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import prepare
from torch import nn

from vitpeft.config import AugmentConfig, TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.models import create_model
from vitpeft.reproduce import MACHINE_FIELDS  # of the machine, not the run
from vitpeft.resume import ResumeFile
from vitpeft.runs import seed_everything
from vitpeft.train import Split, fit, load_optimizer_state

EPOCHS, BATCH = 2, 8


class Killed(Exception):
    """Stands in for a kill: raised after an optimizer step, before that step's state is saved."""


def data():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (64, 8, 8, 3)).astype(np.uint8))
    return Split(images, torch.from_numpy(rng.integers(0, 10, 64))), Split(images[:16], torch.arange(16) % 10)


def preprocessor():
    # Every random source of training: the data generator (shuffle, affine, RandAugment, erasing
    # boxes) and torch's global generator (MixUp, CutMix and the choice between them, erasing
    # noise).
    augment = AugmentConfig(
        scale=(0.8, 1.0),
        translate=0.1,
        hflip=True,
        randaugment=True,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        mix_prob=0.8,
        erasing_prob=0.5,
    )
    return BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3, augment, num_classes=10)


def new_method(tiny_spec, name, model_wrapper=None, schedule_steps=EPOCHS * 64 // BATCH):
    """The same initial model and random state every call, as a rerun of the job would build it."""
    seed_everything(0)  # torch's, numpy's and Python's generators, as a run seeds them
    model = create_model(tiny_spec, num_classes=10)
    method = prepare(model, name, total_steps=schedule_steps)
    if model_wrapper is not None:
        method = dataclasses.replace(method, model=model_wrapper(method.model))
    return method


def train(method, resume=None, accumulation=1, kill_at=None, ema_decay=0.0, precision="auto"):
    if kill_at is not None:
        hook = method.after_step

        def after_step(step, skipped):
            if hook is not None:
                hook(step, skipped)
            if step == kill_at:
                raise Killed

        method = dataclasses.replace(method, after_step=after_step)
    cfg = TrainConfig(
        epochs=EPOCHS,
        batch_size=BATCH,
        warmup_epochs=0.5,
        accumulation_steps=accumulation,
        precision=precision,
    )
    train_split, val_split = data()
    return fit(
        method,
        train_split,
        val_split,
        preprocessor(),
        cfg,
        1e-3,
        0.05,
        seed=0,
        resume=resume,
        ema_decay=ema_decay,
    )


def trainable(method):
    return {n: p.detach().clone() for n, p in method.model.named_parameters() if p.requires_grad}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_state_saved_without_a_gradient_scaler_resumes_under_one(tmp_path, tiny_spec):
    """``precision: auto`` may resolve to fp32 or bf16 where a run started and to fp16 where it goes
    on; the scaler then starts afresh instead of failing on the empty state saved without one."""
    resume = ResumeFile(tmp_path / "resume.pt", every=4, key="run")
    with pytest.raises(Killed):
        train(new_method(tiny_spec, "lora_r4"), resume, kill_at=5, precision="fp32")
    assert torch.load(resume.path, weights_only=True)["scaler"] == {}
    history = train(
        new_method(tiny_spec, "lora_r4"), ResumeFile(resume.path, every=4, key="run"), precision="fp16"
    )
    assert len(history.epoch) == EPOCHS


@pytest.mark.parametrize(
    ("name", "kill_at", "schedule_steps"),
    [
        ("full", 5, 16),  # resumes in epoch 1 from step 4
        ("lora_r4", 11, 16),  # resumes in epoch 2 from step 8
        # AdaLoRA still pruning when training ends (a 40-step budget schedule), so its importance
        # scores are live at the end and compared too; then its final mask (step 13 of 16), after
        # which the rank pattern kept in the adapter config must come back.
        ("adalora_r4", 11, 40),
        ("adalora_r4", 16, 16),
    ],
)
def test_a_killed_fit_resumes_to_the_same_weights_and_curves(
    tmp_path, tiny_spec, name, kill_at, schedule_steps
):
    expected = new_method(tiny_spec, name, schedule_steps=schedule_steps)
    expected_history = train(expected)

    resume = ResumeFile(tmp_path / "resume.pt", every=4, key="run")
    with pytest.raises(Killed):
        train(new_method(tiny_spec, name, schedule_steps=schedule_steps), resume, kill_at=kill_at)
    saved = torch.load(resume.path, weights_only=True)
    assert saved["position"]["global_step"] == (kill_at - 1) // 4 * 4

    resumed = new_method(tiny_spec, name, schedule_steps=schedule_steps)
    history = train(resumed, ResumeFile(resume.path, every=4, key="run"))
    assert history == expected_history
    assert_same_weights(trainable(resumed), trainable(expected))
    if name.startswith("adalora"):
        assert any(0 < r < 6 for r in history.records[-1]["adalora_ranks"].values())  # it pruned
        state, expected_state = resumed.state(), expected.state()
        assert state["rank_pattern"] == expected_state["rank_pattern"]
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            assert_same_weights(state[key], expected_state[key])


@pytest.mark.parametrize(("name", "kill_at"), [("full", 5), ("lora_r4", 11)])
def test_a_killed_fit_with_a_weight_average_resumes_to_the_same_average(tmp_path, tiny_spec, name, kill_at):
    expected = new_method(tiny_spec, name)
    expected_history = train(expected, ema_decay=0.9)

    resume = ResumeFile(tmp_path / "resume.pt", every=4, key="run")
    with pytest.raises(Killed):
        train(new_method(tiny_spec, name), resume, kill_at=kill_at, ema_decay=0.9)
    assert torch.load(resume.path, weights_only=True)["ema"]  # the average is part of the state

    resumed = new_method(tiny_spec, name)
    history = train(resumed, ResumeFile(resume.path, every=4, key="run"), ema_decay=0.9)
    assert history == expected_history  # its validation curve is the average's
    assert_same_weights(trainable(resumed), trainable(expected))  # the final weights: the average


def test_a_state_of_another_run_is_ignored_with_a_warning(tmp_path, tiny_spec, capsys):
    with pytest.raises(Killed):
        train(new_method(tiny_spec, "lora_r4"), ResumeFile(tmp_path / "r.pt", 2, "old config"), kill_at=5)
    resume = ResumeFile(tmp_path / "r.pt", 2, "new config")
    method = new_method(tiny_spec, "lora_r4")
    history = train(method, resume)
    assert "ignoring resume state" in capsys.readouterr().err
    assert resume.time_before_s == 0.0
    expected = new_method(tiny_spec, "lora_r4")
    assert history == train(expected)
    assert_same_weights(trainable(method), trainable(expected))


class RunsOutOfMemory(nn.Module):
    """A model whose training forward raises out-of-memory (the CUDA error class, on CPU too)
    above ``limit`` images."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, x):
        if self.training and len(x) > self.limit:  # training only: evaluation is not backed off
            raise torch.OutOfMemoryError(f"simulated: {len(x)} images > {self.limit}")
        return self.model(x)


def test_out_of_memory_halves_the_micro_batch_and_trains_as_if_it_was_set_so(tiny_spec):
    # Batches of 8 fail, so the very first step backs off to micro-batches of 4, twice accumulated:
    # from then on exactly the run configured with accumulation_steps=2.
    method = new_method(tiny_spec, "lora_r4", lambda m: RunsOutOfMemory(m, limit=4))
    history = train(method)
    expected = new_method(tiny_spec, "lora_r4")
    expected_history = train(expected, accumulation=2)
    assert history.micro_batch_size == expected_history.micro_batch_size == [4, 4]
    assert history.oom_backoffs == [1, 0] and expected_history.oom_backoffs == [0, 0]
    assert dataclasses.replace(history, oom_backoffs=[]) == dataclasses.replace(
        expected_history, oom_backoffs=[]
    )
    assert_same_weights(
        {n.removeprefix("model."): p for n, p in trainable(method).items()}, trainable(expected)
    )


def test_out_of_memory_at_one_image_is_raised(tiny_spec):
    with pytest.raises(torch.OutOfMemoryError):
        train(new_method(tiny_spec, "lora_r4", lambda m: RunsOutOfMemory(m, limit=0)))


def test_a_non_finite_loss_stops_the_run_every_time_and_writes_no_result(tmp_path, tiny_config, capsys):
    from vitpeft import config as study_config
    from vitpeft.data import prepare_dataset
    from vitpeft.runs import train_run

    prepare_dataset(tiny_config["datasets"]["digits"], tmp_path / "data")
    run = study_config.resolve_run(tiny_config, "deit_tiny", "digits", "scratch", 0).to_dict()
    run["method"]["lr"] = 1e38  # one AdamW step moves every weight by ~1e38: the logits overflow
    for attempt in ("first", "resumed"):
        with pytest.raises(FloatingPointError, match=r"stopping, the loss is nan at epoch 1, step 2 of 68"):
            train_run(run, tmp_path / "data", None, tmp_path / "run", threads=1, checkpoint_every=1)
        # The resume state of step 1 stays, and the rerun that starts from it stops the same way.
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["resume.pt"], attempt
    assert "resuming from" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_job_killed_with_sigkill_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import time

    import yaml
    from conftest import REPO, snakemake_command

    from vitpeft.io import read_json

    config = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    config["studies"]["tiny"].update(methods=["scratch"], transfer_check=False)
    config["train"]["epochs"] = 2  # 34 steps, a resume state every 2
    config["checkpoint_every"] = 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "results" / "runs" / "digits" / "scratch" / "deit_tiny" / "seed0"
    target = str(run_dir.relative_to(tmp_path) / "metrics.json")
    cmd = snakemake_command(tmp_path, tmp_path / "config.yaml", "--cores", "1")

    # The first attempt dies by SIGKILL (Snakemake and the job, the whole process group) as soon as
    # training has saved a resume state: no clean-up code of ours or of Snakemake's runs.
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen([*cmd, target], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "resume.pt").exists():
        assert job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no resume state after 300 s"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (run_dir / "metrics.json").exists()

    def snakemake(*args):
        result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-5000:]

    killed_at = (run_dir / "resume.pt").stat().st_mtime_ns
    snakemake("--unlock")
    assert (run_dir / "resume.pt").stat().st_mtime_ns == killed_at  # no orphan went on training
    snakemake("--rerun-incomplete", target)
    log = (run_dir / "train.log").read_text()
    step = int(log.split("at step ")[1].split()[0])
    state = run_dir.relative_to(tmp_path) / "resume.pt"
    assert f"resuming from {state} at step {step} of 136" in log and 2 <= step < 136
    assert not (run_dir / "resume.pt").exists()  # removed once the run completed
    resumed = read_json(run_dir / "metrics.json")

    snakemake("--forcerun", "train", target)  # the same run, never interrupted
    assert "resuming" not in (run_dir / "train.log").read_text()
    uninterrupted = read_json(run_dir / "metrics.json")
    assert {k: v for k, v in resumed.items() if k not in MACHINE_FIELDS} == {
        k: v for k, v in uninterrupted.items() if k not in MACHINE_FIELDS
    }


def test_a_job_of_several_seeds_trains_each_as_alone_and_a_rerun_keeps_the_finished_ones(
    tmp_path, tiny_config
):
    """The rule train's job trains every seed in one process. Each seed ends as it would alone; when
    the job dies after a seed has finished, Snakemake deletes all the job's outputs before the rerun,
    and the finished seed comes back from its kept final state instead of training again."""
    from vitpeft import config as study_config
    from vitpeft.data import prepare_dataset
    from vitpeft.io import read_json
    from vitpeft.runs import RESUME_NAME, train_run, train_runs

    prepare_dataset(tiny_config["datasets"]["digits"], tmp_path / "data")
    runs = [
        study_config.resolve_run(tiny_config, "deit_tiny", "digits", "scratch", s).to_dict() for s in (0, 1)
    ]
    dirs = [tmp_path / "job" / f"seed{s}" for s in (0, 1)]
    logs = [d / "train.log" for d in dirs]
    alone = train_run(runs[1], tmp_path / "data", None, tmp_path / "alone", threads=1)

    diverging = {**runs[1], "method": {**runs[1]["method"], "lr": 1e38}}  # seed 1 dies at its step 2
    with pytest.raises(FloatingPointError):
        train_runs([runs[0], diverging], tmp_path / "data", None, dirs, logs, threads=1, checkpoint_every=5)
    first = read_json(dirs[0] / "metrics.json")
    assert (dirs[0] / RESUME_NAME).exists()  # kept: the job did not finish
    assert "stopping, the loss is nan" in logs[1].read_text()  # the traceback is in the seed's log

    for name in ("metrics.json", "config.json", "provenance.json", "checkpoint.safetensors"):
        (dirs[0] / name).unlink()  # what Snakemake does to a job's outputs before rerunning it
    train_runs(runs, tmp_path / "data", None, dirs, logs, threads=1, checkpoint_every=5)
    assert "resuming from" in logs[0].read_text() and "epoch 1/" not in logs[0].read_text()
    assert "resuming from" not in logs[1].read_text()  # it died before its first state: afresh
    again = [read_json(d / "metrics.json") for d in dirs]

    def results(metrics):
        return {k: v for k, v in metrics.items() if k not in MACHINE_FIELDS}

    assert results(again[0]) == results(first)
    assert results(again[1]) == results(alone)
    assert not any((d / RESUME_NAME).exists() for d in dirs)  # removed once the whole job is written


@pytest.mark.parametrize("saved_fused, here_fused", [(False, True), (True, False)])
def test_a_resumed_optimizer_keeps_this_devices_kernel_and_steps_under_a_gradient_scaler(
    saved_fused, here_fused
):
    """A state saved on the CPU (reference loop) and resumed on CUDA (fused), or the other way:
    the CPU's fused kernel and scaler stand in for CUDA's."""
    weight = nn.Parameter(torch.ones(4))
    saved = torch.optim.AdamW([weight], lr=0.1, fused=saved_fused)
    weight.grad = torch.ones(4)
    saved.step()
    resumed = torch.optim.AdamW([weight], lr=0.1, fused=here_fused)
    load_optimizer_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]["fused"] is here_fused and resumed.param_groups[0]["lr"] == 0.1
    assert resumed.state[weight]["step"] == 1
    scaler = torch.amp.GradScaler("cpu")
    resumed.zero_grad()
    scaler.scale(weight.sum()).backward()
    scaler.unscale_(resumed)
    scaler.step(resumed)  # a fused step takes the scaler's inf check; the reference loop must not
    scaler.update()
    assert resumed.state[weight]["step"] == 2
