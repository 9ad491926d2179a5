"""The submission package: one archive with the paper and its supplement, their generated parts,
the results tables, the best run of every cell, the environment lock, the data manifests and the
source at the commit that built it (``git archive``), plus ``SHA256SUMS``.

The archive is deterministic (sorted members, fixed times and owners), so the same results give
the same bytes and its own checksum can be quoted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pandas as pd

from vitpeft.io import atomic_path, read_json, sha256_file

# What a reader needs of the best run of each cell: the trained weights (the adapter and head,
# or the whole model for full fine-tuning), how it was made, and the export's checked numbers.
RUN_FILES = ("config.json", "metrics.json", "provenance.json", "checkpoint.safetensors", "export/report.json")


def best_runs(runs_csv: str | Path) -> pd.DataFrame:
    """The seed with the best validation top-1 of every dataset x method x model (never test)."""
    runs = pd.read_csv(runs_csv)
    best = runs.loc[runs.groupby(["dataset", "method", "model"]).val_top1.idxmax()]
    return best.sort_values(["dataset", "method", "model"], ignore_index=True)


def members(
    paper_pdf: str | Path,
    supplement_pdf: str | Path,
    generated: list[str | Path],
    tables: list[str | Path],
    environment: list[str | Path],
    manifests: list[str | Path],
    runs_csv: str | Path,
) -> dict[str, Path]:
    """Archive name -> file on disk."""
    chosen = {"paper.pdf": Path(paper_pdf), "supplement.pdf": Path(supplement_pdf)}
    chosen |= {f"paper_parts/{Path(p).name}": Path(p) for p in generated}
    chosen |= {f"tables/{Path(p).name}": Path(p) for p in tables}
    chosen |= {f"environment/{Path(p).name}": Path(p) for p in environment}
    chosen |= {f"data/{Path(p).parent.name}/{Path(p).name}": Path(p) for p in manifests}
    for run in best_runs(runs_csv).itertuples():
        name = f"best_runs/{run.dataset}/{run.method}/{run.model}/seed{run.seed}"
        for file in RUN_FILES:
            path = Path(run.run_dir) / file
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: the best run of {run.method} on {run.dataset} is incomplete"
                )
            chosen[f"{name}/{file}"] = path
    return chosen


def _add(archive: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else path.stat().st_size
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    if data is not None:
        archive.addfile(info, io.BytesIO(data))
    else:
        with open(path, "rb") as handle:
            archive.addfile(info, handle)


def source_files(repository: str | Path) -> dict[str, bytes]:
    """The repository's tracked files at its checked-out commit (``git archive HEAD``), as
    ``source/<path>``, and ``source/COMMIT``: the commit id, and whether the working tree had
    uncommitted changes (then the source differs from what built the results)."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise RuntimeError(
            f"{repository} is not a git checkout: the archive's source comes from git archive"
        ) from err
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    files = {}
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", commit))) as tree:
        for member in tree.getmembers():
            if member.isfile():
                files[f"source/{member.name}"] = tree.extractfile(member).read()
    note = f"{commit}\n" + (
        "uncommitted changes in the working tree when this archive was built\n" if dirty else ""
    )
    return {**files, "source/COMMIT": note.encode()}


class FailedChecklistError(RuntimeError):
    """The checklist failed: the paper is a draft, and a draft is not submitted."""


def require_passed(checklist_json: str | Path) -> None:
    """Raise :class:`FailedChecklistError` naming every failed check, if any failed."""
    check = read_json(checklist_json)
    if not check["passed"]:
        raise FailedChecklistError(
            f"{checklist_json}: {len(check['failures'])} check(s) failed, so paper.pdf is a draft and "
            "no submission archive is built: " + "; ".join(check["failures"])
        )


def build_submission(
    out_archive: str | Path,
    checklist_json: str | Path,
    config: dict | None = None,
    root: str = "submission",
    source_repository: str | Path | None = None,
    **inputs,
) -> dict[str, str]:
    """Write the archive (``.tar.gz``) with every member under ``root/`` and ``root/SHA256SUMS``,
    if the checklist passed (:func:`require_passed`); the checklist goes in with the tables.

    Args:
        config: the resolved study config, stored as ``environment/config.resolved.yaml``.
        source_repository: the git checkout whose source goes in (:func:`source_files`).
        inputs: the arguments of :func:`members`.

    Returns:
        archive name -> SHA-256 of every member but the list itself.
    """
    import yaml

    require_passed(checklist_json)
    inputs["tables"] = [*inputs.get("tables", []), checklist_json]
    files = members(**inputs)
    data = {"environment/config.resolved.yaml": yaml.safe_dump(config).encode()} if config else {}
    if source_repository is not None:
        data |= source_files(source_repository)
    sums = {name: sha256_file(path) for name, path in files.items()}
    sums |= {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
    sums = dict(sorted(sums.items()))
    listing = "".join(f"{digest}  {name}\n" for name, digest in sums.items()).encode()
    # gzip's header holds a time and a file name: without them the bytes depend on the contents only
    with (
        atomic_path(out_archive) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        _add(archive, f"{root}/SHA256SUMS", data=listing)
        for name in sums:
            _add(archive, f"{root}/{name}", data=data.get(name), path=files.get(name))
    return sums
