"""The runner's log reader thread (sandbox.logreader._LogReader, Rule 5) without an engine: its input is a
plain iterator of log bytes, as docker-py yields them when it exposes no socket file.

The last, unterminated line goes through the rate limit like every other line, and the trio side's
final flush never touches the line splitter while the reader thread is inside it (issue 13 M5 review).
"""

from __future__ import annotations

import threading

from sandbox.jobio import LineSplitter, LogRateLimit
from sandbox.logreader import _LogReader

WAIT_S = 5.0  # a bound on every wait here: a broken lock must fail the test, never hang it


def test_the_last_unterminated_line_is_rate_limited_like_the_others():
    limit = LogRateLimit(1000, 50)
    reader = _LogReader(iter([b"ok\n" + b"y" * 100]), limit, threading.Lock())
    reader.run()
    assert list(reader.lines) == [b"ok"]  # the 100-byte tail is past the burst: dropped, not queued
    assert limit.dropped_lines == 1 and limit.dropped_bytes == 101 and limit.admitted_bytes == 3


def test_the_final_flush_on_the_trio_side_is_rate_limited_too():
    limit = LogRateLimit(1000, 50)
    reader = _LogReader(iter(()), limit, threading.Lock())
    assert list(reader.splitter.feed(b"z" * 100)) == []  # an unterminated line, still in the splitter
    assert reader.take(flush=True) == []
    assert limit.dropped_bytes == 101 and reader.closed


def test_without_a_limit_the_last_line_is_kept():
    reader = _LogReader(iter([b"a\nb"]), None, threading.Lock())
    reader.run()
    assert list(reader.lines) == [b"a", b"b"]


class _WatchedSplitter(LineSplitter):
    """A splitter that notes when two threads are inside it at once, and can hold one inside ``feed``."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.overlaps = 0
        self.feeding = threading.Event()
        self.release = threading.Event()

    def feed(self, chunk: bytes):  # type: ignore[override]
        self.inside += 1
        try:
            self.feeding.set()
            self.release.wait(WAIT_S)  # held inside, as a thread preempted mid-feed would be
            yield from super().feed(chunk)
        finally:
            self.inside -= 1

    def flush(self):  # type: ignore[override]
        if self.inside:
            self.overlaps += 1
        yield from super().flush()


def test_the_trio_side_flush_waits_for_a_reader_thread_inside_the_splitter():
    reader = _LogReader(iter([b"first\nsecond-unterminated"]), None, threading.Lock())
    splitter = reader.splitter = _WatchedSplitter()
    thread = threading.Thread(target=reader.run)
    thread.start()
    assert splitter.feeding.wait(WAIT_S)
    taken: list[bytes] = []
    flusher = threading.Thread(target=lambda: taken.extend(reader.take(flush=True)))
    flusher.start()
    flusher.join(0.5)  # without the lock it is done by now, having flushed under the feeding thread
    splitter.release.set()
    thread.join(WAIT_S)
    flusher.join(WAIT_S)
    assert not thread.is_alive() and not flusher.is_alive()
    assert splitter.overlaps == 0
    # Every line is passed on exactly once: the thread's complete line, and the tail one side flushed.
    assert sorted(list(reader.lines) + taken) == [b"first", b"second-unterminated"]
