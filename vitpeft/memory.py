"""Peak memory of each phase of a run (the training steps, evaluation), not only of the process.

A process's peak counts everything since it started: the fp32 model before quantization, the
quantization probe, and evaluation at its larger batch, which for the linear probe outweighs
training. Each phase is therefore measured on its own, as the memory in use at its highest point
(absolute: the process, the data held in memory, the weights and the optimizer state included;
what the process needed during that phase, not the increase over its start).

- CUDA: ``torch.cuda.reset_peak_memory_stats`` at the phase's start, ``max_memory_allocated``
  at its end (tensors; the caching allocator's spare blocks and the CUDA context are not counted).
- CPU on Linux >= 4.0: writing ``5`` to ``/proc/self/clear_refs`` resets the resident set's
  high-water mark (``VmHWM`` in ``/proc/self/status``) to the current resident set; the kernel
  keeps the mark up itself, so no short peak is missed and nothing runs beside training.
- CPU elsewhere: a background thread samples the resident set every few milliseconds during the
  phase (peaks shorter than that may be missed).

Resetting a counter also resets what the whole process reports (``ru_maxrss`` on Linux), so the
process's peak is kept here too: the counter is read before every reset.
"""

from __future__ import annotations

import contextlib
import re
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

MIB = 2**20
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


class CudaCounter:
    """CUDA's allocator statistics: tensors allocated on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> float:
        return self.peak()

    def peak(self) -> float:
        """MiB at the highest point since the last start (since the process began before one)."""
        return torch.cuda.max_memory_allocated(self.device) / MIB


class HighWaterMark:
    """Linux's resettable high-water mark of the process's resident set.

    Raises:
        OSError: the kernel does not let the process reset its mark (before Linux 4.0, some
            sandboxes), or has no mark to read.
    """

    def __init__(self):
        self._carried = self._read()  # the process's peak so far, which the test reset below forgets
        CLEAR_REFS.write_text("5")

    def start(self) -> None:
        CLEAR_REFS.write_text("5")
        self._carried = 0.0

    def stop(self) -> float:
        return self.peak()

    def peak(self) -> float:
        """MiB at the highest point since the last start (since the process began before one)."""
        return max(self._carried, self._read())

    @staticmethod
    def _read() -> float:
        match = re.search(r"^VmHWM:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
        if match is None:
            raise OSError(f"no VmHWM line in {STATUS}")
        return int(match[1]) / 1024


class RssSampler:
    """The resident set sampled every ``interval_s`` by a background thread, for one phase at a time."""

    def __init__(self, interval_s: float = 0.002):
        import psutil  # a dependency of peft; only needed where the kernel's mark cannot be reset

        self.interval_s = interval_s
        self.samples = 0
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self._peak = 0
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """The phase's peak, in MiB; the thread has ended when this returns."""
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.sample()
        return self._peak / MIB

    def peak(self) -> float:
        """The process's peak resident set since it began (never reset here)."""
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / MIB if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def counter_for(device: torch.device):
    """How to measure a phase's peak on ``device`` (see the module's docstring)."""
    if device.type == "cuda":
        return CudaCounter(device)
    try:
        return HighWaterMark()
    except OSError:
        return RssSampler()


class PhasePeaks:
    """The peak memory (MiB) of each named phase on ``device``, over all its passes, and of the process.

    Example::

        memory = PhasePeaks(device)
        with memory.phase("train"):
            ...  # the training steps of an epoch
        with memory.phase("eval"):
            ...
        memory.peaks["train"], memory.process_peak_mb()

    Args:
        counter: how to measure (by default :func:`counter_for` the device): ``start()`` begins a
            phase, ``stop()`` returns its peak, ``peak()`` the highest point since the last start
            (or since the process began).
    """

    def __init__(self, device: torch.device, counter=None):
        self.counter = counter if counter is not None else counter_for(device)
        self.peaks: dict[str, float] = {}
        self._process = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._process = max(self._process, self.counter.peak())  # before the reset forgets it
        self.counter.start()
        try:
            yield
        finally:
            peak = self.counter.stop()
            self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
            self._process = max(self._process, peak)

    def process_peak_mb(self) -> float:
        """The process's peak since it began (or since another :class:`PhasePeaks` last reset the
        counter): setup, every phase and what lay between them."""
        return max(self._process, self.counter.peak())
