"""The blocking half of a job's log streams (runner Rule 5): one thread per stream reads the engine's
frames, splits lines, applies the log rate limit and queues what is admitted for the job's task.

Rule 1: a job's logs cost the provider in proportion to its log rate limit, not to what the job writes:
reading is held to READ_FACTOR times the limit, and at most MAX_PENDING_LINES wait for the job's task.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import Any

import trio

from sandbox.engine import FOREIGN, translate
from sandbox.errors import SandboxError
from sandbox.jobio import (
    LineSplitter,
    LogFrames,
    LogRateLimit,
)

LOG_POLL_S = 0.05  # how often admitted log lines are handed from the reader thread to the job
READ_FACTOR = 4  # with a log rate limit, logs are read at most this many times faster than the limit
MAX_PENDING_LINES = 1024  # lines read but not yet taken by the job's task (at most 64 KiB each)


class _LogReader:
    """Blocking half of one log stream: frames → lines → the rate limit → a queue the trio side takes.

    The limit is shared by a job's two streams, so it is used under a lock. With a limit, reading itself
    is held to READ_FACTOR times its rate: past that, this thread sleeps, the engine's follower waits on
    the socket, and neither this process nor dockerd spends CPU on lines that would be dropped (what the
    json-file driver rotates away meanwhile is never read, and so not counted in the drop note).
    """

    def __init__(self, gen: Iterator[bytes], limit: LogRateLimit | None, lock: threading.Lock) -> None:
        self.gen, self.limit, self.lock = gen, limit, lock
        self.splitter = LineSplitter()
        # The splitter's buffer is touched by this thread (feed) and, at the end, by the trio side
        # (flush) while an abandoned thread may still be feeding: both hold this lock.
        self._split_lock = threading.Lock()
        self.lines: collections.deque[bytes] = collections.deque()
        self.done = trio.Event()
        self.error: SandboxError | None = None
        self.closed = False
        self._read_tokens = 0.0
        self._read_at = time.monotonic()

    def admit(self, nbytes: int) -> bool:
        if self.limit is None:
            return True
        with self.lock:
            return self.limit.admit(nbytes, time.monotonic())

    def _throttle(self, nbytes: int) -> None:
        if self.limit is None:
            return
        rate, burst = self.limit.rate * READ_FACTOR, self.limit.burst * READ_FACTOR
        now = time.monotonic()
        self._read_tokens = min(float(burst), self._read_tokens + (now - self._read_at) * rate) - nbytes
        self._read_at = now
        if self._read_tokens < 0:
            time.sleep(min(1.0, -self._read_tokens / rate))

    def _chunks(self) -> Iterator[bytes]:
        """The log bytes: straight off the response's buffered socket, 64 KiB a read, when docker-py
        exposes it (one read per buffer instead of two urllib3 reads per line); else docker-py's frames."""
        fp = _response_file(self.gen)
        if fp is None:
            yield from self.gen
            return
        frames = LogFrames()
        while not frames.ended and (data := fp.read1(1 << 16)):
            if payload := frames.feed(data):
                yield payload

    def run(self) -> None:
        try:
            for chunk in self._chunks():
                with self._split_lock:
                    if self.closed:
                        return
                    raws = list(self.splitter.feed(chunk))
                self.lines.extend(raw for raw in raws if self.admit(len(raw) + 1))
                self._throttle(len(chunk))
                while len(self.lines) > MAX_PENDING_LINES and not self.closed:  # the consumer is behind:
                    time.sleep(LOG_POLL_S / 5)  # wait for it rather than hold an unbounded queue
            self.lines.extend(self._flush())
        except FOREIGN as exc:
            self.error = translate(exc, "logs")
        except ValueError as exc:  # the socket was shut under the read (close on cancel)
            self.error = SandboxError(f"logs: {exc}")

    def _flush(self, *, close: bool = False) -> list[bytes]:
        """The unterminated last line, through the rate limit like every other line (Rule 5); with
        `close`, the reader thread feeds nothing more after it."""
        with self._split_lock:
            self.closed = self.closed or close
            rest = list(self.splitter.flush())
        return [raw for raw in rest if self.admit(len(raw) + 1)]

    def take(self, *, flush: bool = False) -> list[bytes]:
        """The admitted lines so far; with `flush` (the end: the thread is done or abandoned), the
        reader is closed and its unterminated last line is added, if admitted."""
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        if flush:
            out.extend(self._flush(close=True))
        return out


def _response_file(stream: object) -> Any:
    """The buffered socket file under docker-py's log stream (`CancellableStream._response`), with the
    client's read timeout lifted as docker-py's own helper does; None where the SDK is shaped otherwise."""
    response = getattr(stream, "_response", None)
    fp = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    if fp is None or not hasattr(fp, "read1"):
        return None
    raw_io = getattr(fp, "raw", None)
    sock = getattr(raw_io, "sock", None) or getattr(raw_io, "_sock", None)
    if sock is not None:
        sock.settimeout(None)
    return fp
