"""A job's outputs: the engine's tar of /io/out, read under the plan's byte cap and rewritten with only
directories and regular files (jobio Rule 3), hashed as it is written (blocking; the runner calls it
in a thread).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import docker.types

from sandbox.errors import SandboxError
from sandbox.jobio import (
    output_entry_problem,
)
from sandbox.plan import IO_DIR


@dataclass(frozen=True)
class OutputArchive:
    path: Path
    size_bytes: int
    sha256: str
    skipped: tuple[tuple[str, str], ...] = ()  # (name in the tar, why) of entries not handed back


def _tempfile() -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="suanli-out-", suffix=".tar")
    os.close(fd)
    return path


def _export(api: docker.APIClient, container: str, dest: Path, cap: int) -> OutputArchive:
    """Blocking: the engine's tar of /io/out, read as a stream under the byte cap and written to `dest`
    with only its directories and regular files (jobio Rule 3: a symlink or device is skipped by name,
    never the reason to lose the rest). One file on disk, one pass."""
    chunks, _stat = api.get_archive(container, IO_DIR + "/out")
    skipped: list[tuple[str, str]] = []
    try:
        with open(dest, "wb") as raw_out:
            out = _Digesting(raw_out)
            with tarfile.open(fileobj=_CappedStream(iter(chunks), cap), mode="r|") as tin, \
                    tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
                for member in tin:
                    problem = output_entry_problem(member)
                    if problem is not None:
                        skipped.append((member.name[:256], problem))
                        continue
                    tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
    except tarfile.TarError as exc:
        dest.unlink(missing_ok=True)
        raise SandboxError(f"the job's outputs are not a readable tar: {exc}") from exc
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return OutputArchive(dest, out.size, "sha256:" + out.digest.hexdigest(), tuple(skipped))


class _CappedStream:
    """A read()-able view of the engine's archive chunks that refuses to pass `cap` bytes."""

    def __init__(self, chunks: Iterator[bytes], cap: int) -> None:
        self.chunks, self.cap, self.seen, self.buf = chunks, cap, 0, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.seen += len(chunk)
            if self.seen > self.cap:
                raise SandboxError("the job's outputs exceed the size cap", expected=self.cap, actual=self.seen)
            self.buf += chunk
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class _Digesting:
    """A write()-able file that also hashes and counts what it writes (the digest of what is delivered)."""

    def __init__(self, f: Any) -> None:
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return int(self.f.write(data))
