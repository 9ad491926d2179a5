import threading
import time

import numpy as np
import pytest
import torch
from conftest import prepare

from vitpeft.config import TrainConfig
from vitpeft.data.pipeline import BatchPreprocessor
from vitpeft.memory import MIB, HighWaterMark, PhasePeaks, RssSampler
from vitpeft.train import Split, fit

CPU = torch.device("cpu")


def touched(mib: int) -> torch.Tensor:
    """``mib`` MiB of resident memory (written, so every page is really there); freed on ``del``."""
    return torch.ones(mib * MIB // 4)


def test_a_phase_peak_is_its_own_and_the_process_peak_is_kept():
    memory = PhasePeaks(CPU)
    assert isinstance(memory.counter, HighWaterMark)  # Linux >= 4.0, as on every machine we run on
    before = touched(300)
    del before  # a large block goes back to the kernel at once (glibc maps it apart)
    with memory.phase("quiet"):
        pass
    with memory.phase("busy"):
        held = touched(200)
        del held
    with memory.phase("quiet"):  # a second pass keeps the larger of the two
        pass
    assert memory.peaks["busy"] > memory.peaks["quiet"] + 180
    # the 300 MiB before any phase is in no phase, but is in the process's peak
    assert memory.process_peak_mb() > memory.peaks["quiet"] + 280
    assert memory.process_peak_mb() >= memory.peaks["busy"]


def wait_for_samples(sampler: RssSampler, count: int) -> None:
    """Until the sampler's thread has taken ``count`` more samples (not a timing assertion)."""
    target = sampler.samples + count
    deadline = time.monotonic() + 30
    while sampler.samples < target:
        assert time.monotonic() < deadline, "the sampler thread takes no samples"
        time.sleep(0.001)


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rss-sampler"]


def test_the_rss_sampler_sees_the_phase_only_and_stops_its_thread():
    sampler = RssSampler(interval_s=0.001)
    memory = PhasePeaks(CPU, counter=sampler)
    before = touched(300)
    del before
    with memory.phase("busy"):
        assert len(sampler_threads()) == 1
        held = touched(200)
        wait_for_samples(sampler, 2)  # the thread, not only the samples at start and stop
        del held
    assert sampler_threads() == []
    with pytest.raises(RuntimeError), memory.phase("quiet"):
        raise RuntimeError("a failed phase")
    assert sampler_threads() == []  # stopped on the way out of a failure too
    assert memory.peaks["busy"] > memory.peaks["quiet"] + 180  # the 300 MiB before counts for neither


def test_fit_measures_the_training_steps_apart_from_a_larger_evaluation(tiny_model):
    # The linear probe keeps no activations for backward; a 1024-image evaluation batch holds
    # them all at once, so its peak is far above the training steps' (one number cannot say both).
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (1024, 16, 16, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, 1024))
    train, val = Split(images[:64], labels[:64]), Split(images, labels)
    memory = PhasePeaks(CPU)
    cfg = TrainConfig(epochs=1, batch_size=16, eval_batch_size=1024)
    prep = BatchPreprocessor(16, (0.5,) * 3, (0.5,) * 3)
    fit(prepare(tiny_model, "linear"), train, val, prep, cfg, 1e-2, 0.0, seed=0, memory=memory)
    assert set(memory.peaks) == {"train", "eval"}
    assert memory.peaks["train"] + 100 < memory.peaks["eval"] <= memory.process_peak_mb()
