"""Download an archive once, resumably, and verify it against its published digest.

Bytes go to ``<name>.part`` and the file gets its final name only after the MD5 matches, so an
interrupted or corrupted transfer never looks complete to Snakemake. A rerun resumes a partial
file with an HTTP Range request when the server supports it, and restarts it otherwise.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's digest is not the published one."""


def file_digests(path: str | Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def verify_md5(path: str | Path, expected_md5: str) -> dict[str, str]:
    """Return the file's MD5 and SHA-256; raise :class:`ChecksumError` if the MD5 is not expected."""
    digests = file_digests(path)
    if digests["md5"] != expected_md5:
        raise ChecksumError(f"{path}: MD5 is {digests['md5']}, expected {expected_md5}")
    return digests


def download(url: str, dest: str | Path, md5: str, timeout: float = 60.0) -> dict[str, str]:
    """Fetch ``url`` to ``dest`` and verify it; return its MD5 and SHA-256.

    Raises:
        ChecksumError: the complete transfer has the wrong MD5 (the partial file is removed).
        OSError: the transfer failed or ended early (the partial file is kept for a resume).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return verify_md5(dest, md5)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if offset and response.status != 206:  # the server ignored the range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = offset
        with (
            open(part, "ab" if offset else "wb") as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                file=sys.stderr,
                mininterval=5.0,
                ascii=True,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    handle.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead as err:
                handle.write(err.partial)
                written += len(err.partial)
    if total is not None and written != total:
        raise OSError(f"{url}: transfer ended at {written} of {total} bytes; rerun to resume")
    try:
        digests = verify_md5(part, md5)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    return digests
