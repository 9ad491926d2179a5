"""Atomic file writes and run provenance.

Every output of the pipeline goes through :func:`atomic_write`, so a killed job never leaves
a half-written file that Snakemake (or a reader) would take as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


def _process_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once (at import)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; results should get the permissions any other file of this user gets.
FILE_MODE = 0o666 & ~_process_umask()

# Every temporary file of atomic_write and atomic_path is named ".<name>.partial.<random><suffix>".
PARTIAL_MARK = ".partial."

TRACKED_PACKAGES = ("torch", "torchvision", "timm", "peft", "numpy", "pandas", "snakemake")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL_MARK}", suffix=".tmp")
    os.chmod(tmp, FILE_MODE)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for writers that need a file name (torch, numpy, savefig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL_MARK}", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # after the writer: some (safetensors) recreate the file as 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed writer left in ``folder`` (not below it).

    SIGKILL skips the clean-up in atomic_write and atomic_path. A job calls this on its own output
    folder before writing, where no other job writes, so a leftover can only be its own.
    """
    leftovers = sorted(Path(folder).glob(f".*{PARTIAL_MARK}*"))
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    return leftovers


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def canonical(obj: Any) -> Any:
    """``obj`` with every mapping's keys sorted. Snakemake compares params as they are written, key
    order included, so params pass through this: reordering config.yaml must not rerun jobs."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable config."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_state(repo_dir: str | os.PathLike) -> dict[str, Any]:
    """The commit and dirty flag of the checkout that holds the code, if it is a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git_commit": None, "git_dirty": None}


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is empty on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    if platform.system() == "Darwin":  # e.g. "Apple M2"; platform.processor() says only "arm"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.check_output(["sysctl", "-n", "machdep.cpu.brand_string"], text=True).strip()
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a number was computed on.

    ``cpu`` and ``cpu_capability`` (the instruction set whose kernels torch dispatches to, e.g.
    AVX2 or AVX512) decide whether two CPU runs can agree exactly: float kernels, and so results,
    differ between CPU models (see :func:`vitpeft.reproduce.tolerance`).
    """
    import torch

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance(**extra: Any) -> dict[str, Any]:
    """Everything needed to trace a number back to the code, data and machine that made it."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "packages": versions,
        **git_state(Path(__file__).resolve().parent),
        "hardware": hardware(),
        **extra,
    }


@contextlib.contextmanager
def logging_to(path: str | os.PathLike) -> Iterator[None]:
    """Send stdout and stderr to ``path`` while the block runs (one run's log, in a job of several
    runs); an exception's traceback is written there too before it propagates."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    saved = sys.stdout, sys.stderr
    with open(path, "w", buffering=1) as handle:
        sys.stdout = sys.stderr = handle
        try:
            yield
        except BaseException:
            traceback.print_exc(file=handle)
            raise
        finally:
            sys.stdout, sys.stderr = saved


def log_to_file(path: str | os.PathLike) -> None:
    """Send this process's stdout and stderr (progress bars, tracebacks) to a job's log file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w", buffering=1)  # noqa: SIM115 -- lives as long as the job
    sys.stdout = sys.stderr = handle
