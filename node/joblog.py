"""The buyer's copy of a job's output, stored as it arrives (issue 20: ``suanli logs AGREEMENT_ID``).

One file per agreement, ``<data dir>/logs/<agreement id hex>.log``, mode 0600 in a 0700 directory
(node.paths Rule L3: a job's output is the buyer's alone). Each line the provider relays is one
record: a stream byte (``o`` stdout, ``e`` stderr), the data's length as 4 big-endian bytes, the data.
Binary-safe: a line holding a newline or any byte comes back exactly as it arrived.

Rule 1 (bounded): a file holds at most ``MAX_LOG_BYTES``; the first line that would pass it is replaced
by one ``e`` record saying the rest was not kept, and later lines are dropped. The buyer still sees
every line on its terminal; only the stored copy stops.
Rule 2: each record is appended with one ``write`` to a file opened ``O_APPEND`` for that record, so no
open file outlives a job and a record is whole or absent (a reader stops at a cut record).
Rule 3: storing never fails the job: an OSError is logged once per agreement and the line is not kept.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("suanli.joblog")

MAX_LOG_BYTES = 8 << 20  # per agreement; a chatty job's first 8 MiB are what a buyer usually looks for
LOG_DIR = "logs"
TRUNCATED = b"[suanli: the stored log reached its limit (8 MiB); later lines were shown but not kept]"
_HEADER = struct.Struct(">cI")
STREAMS = {"stdout": b"o", "stderr": b"e"}
NAMES = {v: k for k, v in STREAMS.items()}


def log_path(home: Path, agreement_id: bytes) -> Path:
    return home / LOG_DIR / f"{agreement_id.hex()}.log"


def encode_record(stream: str, data: bytes) -> bytes:
    return _HEADER.pack(STREAMS.get(stream, b"e"), len(data)) + data


def keeper(home: Path, agreement_id: bytes) -> Callable[[str, bytes], None]:
    """``on_log(stream, data)`` that appends each line to this agreement's log file (Rules 1-3)."""
    path = log_path(home, agreement_id)
    state = {"full": False, "failed": False}

    def keep(stream: str, data: bytes) -> None:
        if state["full"] or state["failed"]:
            return
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                record = encode_record(stream, data)
                if os.fstat(fd).st_size + len(record) > MAX_LOG_BYTES - len(TRUNCATED) - _HEADER.size:
                    record = encode_record("stderr", TRUNCATED)
                    state["full"] = True
                os.write(fd, record)
            finally:
                os.close(fd)
        except OSError as exc:
            state["failed"] = True
            log.warning("the job's output is not being stored in %s: %s", path, exc)

    return keep


def read_records(path: Path) -> Iterator[tuple[str, bytes]]:
    """(stream, data) of each whole record in a log file, in order; a cut record at the end is skipped."""
    with open(path, "rb") as fh:
        blob = fh.read(MAX_LOG_BYTES + 1)
    at = 0
    while at + _HEADER.size <= len(blob):
        kind, size = _HEADER.unpack_from(blob, at)
        start = at + _HEADER.size
        if start + size > len(blob):
            return
        yield NAMES.get(kind, "stderr"), blob[start:start + size]
        at = start + size
