"""bench/e2e.py's processes and readings: the provider's configuration, a child ``suanli`` process with
its output followed, a process's CPU from /proc, dockerd's, Docker's start events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


PROVIDER_TOML = """\
data_dir = "{data_dir}"
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = [{bootstrap}]

[prices]
cpu_core_micros_per_s = 50
memory_gib_micros_per_s = 10

[limits]
max_duration_s = 3600
max_concurrent_jobs = {max_jobs}
cpu_millis = {cpu_millis}
memory_mib = {memory_mib}

[receipts]
interval_ms = 1000
countersign_timeout_ms = 3000
grace_ms = 5000
exposure_cap_micros = 1000000
"""
JOB_CPU_MILLIS, JOB_MEMORY_MIB = 20, 16
COLD_FLOOR_RECEIPTS = 15
LATENCY_COMMAND = ["sh", "-c", "echo first; sleep 1; echo done"]


def suanli() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


class Child:
    """A child process in its own process group; stdout/stderr lines kept with their arrival time (ns)."""

    def __init__(self, args: list[str]) -> None:
        self.spawned_ns = time.time_ns()
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                      start_new_session=True)
        self.out: list[tuple[int, str]] = []
        self.err: list[tuple[int, str]] = []
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(self.popen.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.popen.stderr, self.err), daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, pipe: Any, sink: list[tuple[int, str]]) -> None:
        for line in pipe:
            with self.cond:
                sink.append((time.time_ns(), line.rstrip("\n")))
                self.cond.notify_all()

    def first_json(self, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while time.monotonic() < deadline:
                for _, line in self.out:
                    if line.startswith("{"):
                        return json.loads(line)  # type: ignore[no-any-return]
                if self.popen.poll() is not None:
                    break
                self.cond.wait(0.2)
        raise SystemExit(f"no JSON line from {self.popen.args[3:5]} (exit {self.popen.poll()}):\n"
                         + "\n".join(line for _, line in self.err[-20:]))

    def wait(self, timeout_s: float) -> int:
        code = self.popen.wait(timeout=timeout_s)
        for t in self.threads:
            t.join(timeout=5)
        return code

    def signal_group(self, sig: int) -> None:
        if self.popen.poll() is None:  # never signal a reaped leader's group id: it may be reused
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(timeout=10)


def cpu_s(pid: int | str) -> float:
    """utime + stime of a process, all threads (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dockerd_cpu_s() -> float | None:
    try:
        pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()[0]
        return cpu_s(pid)
    except (IndexError, OSError):
        return None


def start_events(label: str, since_s: int) -> list[int]:
    """timeNano of every container ``start`` event with ``label`` since ``since_s``."""
    done = subprocess.run(["docker", "events", "--since", str(since_s), "--until", str(int(time.time()) + 1),
                           "--filter", "type=container", "--filter", "event=start", "--filter", f"label={label}",
                           "--format", "{{json .}}"], capture_output=True, text=True, timeout=60, check=True)
    return sorted(json.loads(line)["timeNano"] for line in done.stdout.splitlines() if line.strip())


def write_config(root: Path, name: str, bootstrap: str | None, max_jobs: int, cpu_millis: int,
                 memory_mib: int) -> Path:
    path = root / f"{name}.toml"
    path.write_text(PROVIDER_TOML.format(data_dir=root / name, bootstrap=f'"{bootstrap}"' if bootstrap else "",
                                         max_jobs=max_jobs, cpu_millis=cpu_millis, memory_mib=memory_mib))
    return path
