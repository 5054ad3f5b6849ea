"""One child process of the cluster harness: its output lines collected as they come, every wait bounded.

Rule 1: a process starts in its own session (process group); ``kill`` and ``stop`` signal the group,
and only while its leader is not reaped (a reaped leader's id may belong to a stranger by then).
Rule 2: every wait has a time limit and, when it gives up, says what it waited for and shows the
process's last output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO


class ProcError(AssertionError):
    """A wait on a cluster process gave up: the message says what for and shows its last output."""


class Proc:
    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 stdin: bool = False) -> None:
        self.name = name
        self.started = time.monotonic()
        self.popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                      start_new_session=True, env=env, bufsize=1)
        self.stdout: list[tuple[float, str]] = []  # (monotonic time it arrived, line)
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.popen.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.popen.stderr, False), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, pipe: TextIO, out: bool) -> None:
        for line in pipe:
            with self._cond:
                if out:
                    self.stdout.append((time.monotonic(), line.rstrip("\n")))
                elif len(self.stderr) < 20_000:  # bounded: a chatty node cannot fill the harness's memory
                    self.stderr.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 15) -> str:
        with self._cond:
            out, err = [line for _, line in self.stdout[-n:]], self.stderr[-n:]
        return (f"--- {self.name} (exit {self.popen.poll()}) stdout:\n" + "\n".join(out)
                + "\n--- stderr:\n" + "\n".join(err))

    def wait_for(self, what: str, found: Callable[[], Any], timeout_s: float) -> Any:
        """Wait until ``found()`` (called under the lock) is truthy; ProcError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = found()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    break
                self._cond.wait(min(left, 0.2))
        raise ProcError(f"{self.name}: gave up waiting for {what} after {timeout_s:.0f} s\n{self.tail()}")

    def json_lines(self) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            lines = list(self.stdout)
        docs = []
        for at, line in lines:
            if line.startswith("{"):
                try:
                    docs.append((at, json.loads(line)))
                except ValueError:
                    continue
        return docs

    def json_event(self, what: str, match: Callable[[dict[str, Any]], bool], timeout_s: float,
                   after: int = 0) -> dict[str, Any]:
        """The first JSON line (from line ``after`` on) that ``match`` accepts."""
        def first() -> dict[str, Any] | None:
            for _at, line in self.stdout[after:]:
                if line.startswith("{"):
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and match(doc):
                        return doc
            return None
        return self.wait_for(what, first, timeout_s)  # type: ignore[no-any-return]

    def send_line(self, doc: dict[str, Any]) -> int:
        """Write one JSON line to the process's stdin; returns how many stdout lines came before it."""
        with self._cond:
            mark = len(self.stdout)
        if self.popen.stdin is None:
            raise ProcError(f"{self.name} was started without stdin")
        self.popen.stdin.write(json.dumps(doc) + "\n")
        self.popen.stdin.flush()
        return mark

    def signal_group(self, sig: int) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout_s: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ProcError(f"{self.name} did not exit within {timeout_s:.0f} s\n{self.tail()}") from None
        for t in self._readers:
            t.join(timeout=5)
        return code

    def kill(self) -> None:
        """kill -9 of the whole group, as a crash would; reaps it (bounded)."""
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout_s: float = 10) -> int | None:
        """SIGCONT + SIGTERM to the group, then SIGKILL; reaps the process."""
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self._readers:
            t.join(timeout=2)
        return self.popen.returncode
