"""Real ``suanli`` processes for the CLI tests: start them, read their output live, always stop them.

Rule 1: every process starts in its own session (process group) and is registered with a ``Processes``
owner, whose ``stop_all`` ends the group (SIGCONT, SIGTERM, then SIGKILL) — nothing outlives a test.
Rule 2: every wait is bounded in time; a helper that gives up says what it waited for and shows the
process's last output.
Rule 3: only 127.0.0.1: every listen address and every ``suanli run`` uses loopback (``--local``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
import trio

from node.overlay import provider_overlay
from node.provider import ProviderRuntime, open_provider
from node.testing import local_setup
from p2p.identity import generate_key
from p2p.receipt_records import Receipt
from settlement.store import Store

PROVIDER_TOML = """\
data_dir = "{data_dir}"
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["{bootstrap}"]

[prices]
cpu_core_micros_per_s = {cpu_price}
memory_gib_micros_per_s = 10

[limits]
max_duration_s = 600
max_concurrent_jobs = 3
cpu_millis = 2000
memory_mib = 1024

[receipts]
interval_ms = {interval_ms}
countersign_timeout_ms = {countersign_timeout_ms}
grace_ms = {grace_ms}
exposure_cap_micros = {exposure_cap_micros}
"""


def suanli() -> list[str]:
    """The console script, run by this interpreter (the project's venv)."""
    return [sys.executable, "-m", "node.cli"]


class Proc:
    """One child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.started = time.monotonic()
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True, env=env, bufsize=1)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, pipe: Any, sink: list[str]) -> None:
        for line in pipe:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 25) -> str:
        with self._cond:
            out, err = self.stdout[-n:], self.stderr[-n:]
        return f"--- {self.name} (exit {self.popen.poll()}) stdout:\n" + "\n".join(out) + \
            "\n--- stderr:\n" + "\n".join(err)

    def wait_for(self, what: str, found: Callable[[], Any], timeout_s: float) -> Any:
        """Wait until ``found()`` (called under the lock) is truthy; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = found()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self.popen.poll() is not None and not any(t.is_alive() for t in self._readers):
                    value = found()
                    if value:
                        return value
                    break
                self._cond.wait(min(left, 0.2))
        raise AssertionError(f"{self.name}: gave up waiting for {what} after {timeout_s:.0f} s\n{self.tail()}")

    def json_line(self, what: str, timeout_s: float = 60) -> dict[str, Any]:
        """The first JSON object this process printed on stdout."""
        def first() -> dict[str, Any] | None:
            for line in self.stdout:
                if line.startswith("{"):
                    return json.loads(line)  # type: ignore[no-any-return]
            return None
        return self.wait_for(what, first, timeout_s)  # type: ignore[no-any-return]

    def stderr_lines(self, needle: str) -> list[str]:
        with self._cond:
            return [line for line in self.stderr if needle in line]

    def wait_stderr(self, needle: str, count: int = 1, timeout_s: float = 60) -> list[str]:
        return self.wait_for(f"{count} stderr line(s) with {needle!r}",  # type: ignore[no-any-return]
                             lambda: (lambda hits: hits if len(hits) >= count else None)(
                                 [line for line in self.stderr if needle in line]), timeout_s)

    def wait_exit(self, timeout_s: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout_s:.0f} s\n{self.tail()}") from None
        for t in self._readers:
            t.join(timeout=5)
        return code

    def send(self, sig: int) -> None:
        """Signal the process itself (as Ctrl-C in its terminal would), only while it is not reaped."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """Signal the process group, only while its leader is not reaped: a reaped leader's id may be
        reused by a stranger's group."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout_s: float = 20) -> int | None:
        """SIGCONT + SIGTERM to the group, then SIGKILL; reaps the process."""
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for t in self._readers:
            t.join(timeout=2)
        return self.popen.returncode


class Processes:
    """Owns every process a test module starts (Rule 1)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, name: str, args: list[str]) -> Proc:
        proc = Proc(name, args)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """A short ``suanli`` command, run to completion (bounded)."""
    return subprocess.run([*suanli(), *args], capture_output=True, text=True, timeout=timeout_s)


async def run_cli_async(*args: str) -> tuple[int, str, str]:
    """A ``suanli`` command run to completion from a trio test: (exit code, stdout, stderr). The caller
    bounds it (``trio.fail_after``)."""
    proc = await trio.run_process([*suanli(), *args], capture_stdout=True, capture_stderr=True, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


@asynccontextmanager
async def provider_on_overlay(tmp_path: Path, **setup_changes: Any) -> AsyncIterator[ProviderRuntime]:
    """A provider in this process (``node.testing.local_setup`` under ``tmp_path / "p"``, with
    ``setup_changes`` applied, e.g. ``disk_mib``) serving the overlay on 127.0.0.1, so that a ``suanli run
    --bootstrap <its address>`` finds it; stopped on exit."""
    overlay = provider_overlay()
    setup = replace(local_setup(tmp_path / "p", generate_key()), **setup_changes)
    async with open_provider(setup, handlers=overlay.handlers, topics=overlay.topics,
                             announce=overlay.announce) as runtime:
        overlay.attach(runtime)
        async with trio.open_nursery() as nursery:
            await nursery.start(overlay.serve, runtime)
            yield runtime
            nursery.cancel_scope.cancel()


def start_bootstrap(procs: Processes, root: Path) -> str:
    """A ``suanli bootstrap`` process on 127.0.0.1 with a new key under ``root``; its first address."""
    key = root / "bootstrap.key"
    done = run_cli("keys", "new", "--out", str(key))
    assert done.returncode == 0, done.stderr
    boot = procs.start("bootstrap", [*suanli(), "bootstrap", "--key", str(key), "--listen",
                                     "/ip4/127.0.0.1/tcp/0", "--json"])
    return str(boot.json_line("the bootstrap node ready")["addrs"][0])

def audit_json(*paths: Path) -> tuple[int, dict[str, Any]]:
    """``suanli audit --json PATH...``: (exit code, the document)."""
    done = run_cli("audit", "--json", *map(str, paths))
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"suanli audit printed no JSON (exit {done.returncode}): {done.stderr}") from None
    return done.returncode, doc


def assert_audits_clean(*dbs: Path) -> dict[str, Any]:
    """``suanli audit`` of these databases together finds nothing; its document."""
    code, doc = audit_json(*dbs)
    assert code == 0 and doc["ok"] and doc["findings"] == 0, json.dumps(doc, indent=1)
    return doc


def status_json(data_dir: Path) -> dict[str, Any]:
    done = run_cli("status", "--json", "--data-dir", str(data_dir), timeout_s=30)
    if done.returncode != 0:
        raise AssertionError(f"suanli status exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@contextmanager
def images_removed_after(client: Any) -> Iterator[list[str]]:
    """A list for the test to put image ids in; on exit each is removed from the engine (forced), those
    already gone skipped."""
    ids: list[str] = []
    try:
        yield ids
    finally:
        for image_id in ids:
            try:
                client.api.remove_image(image_id, force=True)
            except docker.errors.NotFound:
                pass


@contextmanager
def tmpfs_mounted(mount: Path, size_mib: int) -> Iterator[Path]:
    """A real filesystem of ``size_mib`` MiB at ``mount`` (created; tmpfs: nothing is written until
    something takes space), unmounted on exit (needs root)."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def containers_of(agreement_hex: str) -> list[str]:
    """Ids of every container (running or not) labelled with this agreement."""
    done = subprocess.run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
                           f"label=suanli.agreement={agreement_hex}"], capture_output=True, text=True, timeout=30,
                          check=True)
    return done.stdout.split()


def receipts_in(db: Path, agreement_hex: str) -> list[tuple[Receipt, bool, bytes]]:
    """(receipt, countersigned by the buyer, body) for one agreement, in seq order (read-only)."""
    with Store(db, readonly=True) as store:
        rows = store.conn.execute("SELECT body, buyer_sig FROM receipts WHERE agreement_id = ? ORDER BY seq",
                                  (bytes.fromhex(agreement_hex),)).fetchall()
    return [(Receipt.decode(body), buyer_sig is not None, body) for body, buyer_sig in rows]


def agreement_ids(db: Path) -> list[str]:
    with Store(db, readonly=True) as store:
        return [a.hex() for a in store.agreement_ids()]


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a poll may race a writer; retried, reported at the end
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s (last error: {last_error})")
        time.sleep(every_s)
