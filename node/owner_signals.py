"""The owner's activity signals (issue 18): each one a pure rule over plain readings, and a thin blocking
reader of the machine, so that tests feed recorded readings and the daemon reads ``/dev``, ``/proc``,
``/sys`` and NVML (through sandbox.gpus, the only module that imports pynvml).

Rule 1: a reading that could not be taken is None and never counts as use: a signal the machine cannot
give (no battery, no GPU, no readable input device) is simply not watched.
Rule 2: terminal and input activity is the newest access time of ``/dev/pts/*``, ``/dev/tty<N>`` and the
readable ``/dev/input/event*``, as ``w``'s IDLE column has it. The kernel moves a terminal's access time
when its input is read, and only when it leaves the current 8-second block (drivers/tty/tty_io.c,
tty_update_time): the first key after a quiet spell is seen at once; idle time is exact to 8 s.
Rule 3: other programs' CPU is the machine's busy time from ``/proc/stat`` minus what our own job
containers used over the same interval (their cgroups' ``usage_usec``), as a percentage of all cores.
Rule 4: an exclusive application matches a process whose ``comm`` is its name (the kernel keeps 15
characters; a longer name must also match the basename of ``argv[0]``); a zombie (exited, not yet reaped
by its parent) is not running.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.nvml import foreign_pids

DEVICE_GLOBS = ("/dev/pts/[0-9]*", "/dev/tty[0-9]*", "/dev/input/event*")
COMM_MAX = 15  # TASK_COMM_LEN - 1


@dataclass(frozen=True)
class Readings:
    """One look at the machine (Rule 1: None = not known)."""

    now_s: float  # wall clock, seconds
    last_input_s: float | None = None  # Rule 2
    foreign_gpu_pids: frozenset[int] | None = None
    other_cpu_pct: float | None = None  # Rule 3
    running: frozenset[str] = frozenset()  # the exclusive applications seen running (Rule 4)
    on_battery: bool | None = None
    gpu_temp_c: int | None = None


# --- pure rules: a reason the owner is using the machine, or None --------------------------------------
def input_use(now_s: float, last_input_s: float | None, idle_s: int) -> str | None:
    if last_input_s is None:
        return None
    ago = max(0.0, now_s - last_input_s)
    return f"keyboard or terminal used {ago:.0f} s ago (idle_s = {idle_s})" if ago < idle_s else None


def gpu_use(pids: frozenset[int] | None) -> str | None:
    if not pids:
        return None
    return f"a GPU process that is no job's is running (pid {min(pids)})"


def cpu_use(pct: float | None, ceiling_pct: int) -> str | None:
    if pct is None or ceiling_pct <= 0 or pct <= ceiling_pct:
        return None
    return f"other programs use {pct:.0f} % of the CPU (cpu_busy_pct = {ceiling_pct})"


def app_use(running: frozenset[str], names: Sequence[str]) -> str | None:
    seen = sorted(set(names) & running)
    return f"{seen[0]} is running (an exclusive application)" if seen else None


def battery_use(on_battery: bool | None, sell_on_battery: bool) -> str | None:
    return "running on battery" if on_battery and not sell_on_battery else None


def temperature_use(temp_c: int | None, ceiling_c: int) -> str | None:
    if temp_c is None or ceiling_c <= 0 or temp_c < ceiling_c:
        return None
    return f"GPU at {temp_c} °C (gpu_max_temp_c = {ceiling_c})"


def other_cpu_pct(prev: tuple[int, int], cur: tuple[int, int], ours_us: int, cores: int,
                  hz: int = 100) -> float | None:
    """Rule 3: ``prev``/``cur`` are ``/proc/stat``'s (busy, total) jiffies; ``ours_us`` the job containers'
    CPU over the same interval. None when no time passed."""
    total = cur[1] - prev[1]
    if total <= 0 or cores <= 0:
        return None
    busy = cur[0] - prev[0] - ours_us * hz / 1_000_000
    return max(0.0, min(100.0, 100.0 * busy / total))


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``'s first line (idle and iowait are not busy)."""
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user and nice
    return total - fields[3] - (fields[4] if len(fields) > 4 else 0), total


def matching_apps(names: Iterable[str], procs: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Rule 4: which of ``names`` run, from (comm, argv[0]) pairs."""
    wanted = {n[:COMM_MAX]: n for n in names}
    out = set()
    for comm, argv0 in procs:
        name = wanted.get(comm)
        if name is not None and (len(name) <= COMM_MAX or os.path.basename(argv0) == name):
            out.add(name)
    return frozenset(out)


def battery_from(supplies: Sequence[Mapping[str, str]]) -> bool | None:
    """On battery: a battery discharging and no mains supply online. None: the machine has no battery."""
    batteries = [s for s in supplies if s.get("type") == "Battery"]
    if not batteries:
        return None
    if any(s.get("type") == "Mains" and s.get("online") == "1" for s in supplies):
        return False
    return any(s.get("status") == "Discharging" for s in batteries)


# --- thin readers (blocking: run them in a worker thread) ----------------------------------------------
def watched_devices(globs: Sequence[str] = DEVICE_GLOBS) -> list[str]:
    """Rule 2: the terminals and the readable input devices that ``globs`` name now."""
    return [path for pattern in globs for path in glob.glob(pattern)
            if not path.startswith("/dev/input/") or os.access(path, os.R_OK)]


def read_last_input(paths: Iterable[str]) -> float | None:
    """Rule 2: the newest access time of ``paths`` (watched_devices); None: none could be read."""
    newest: float | None = None
    stat = os.stat
    for path in paths:
        try:
            atime = stat(path).st_atime
        except OSError:
            continue  # closed meanwhile
        if newest is None or atime > newest:
            newest = atime
    return newest


def read_proc_stat() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as fh:
            return parse_proc_stat(fh.readline())
    except (OSError, ValueError, IndexError):
        return None


def read_cgroup_usage_us(paths: Iterable[str]) -> int:
    """The sum of ``usage_usec`` (cgroup v2 cpu.stat) or ``cpuacct.usage`` ns (v1) of ``paths``."""
    total = 0
    for path in paths:
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue  # the container has exited
        if path.endswith("cpu.stat"):
            for line in text.splitlines():
                if line.startswith("usage_usec "):
                    total += int(line.split()[1])
        elif text.strip().isdigit():
            total += int(text) // 1000
    return total


def read_running(names: Sequence[str]) -> frozenset[str]:
    """Rule 4 from ``/proc/*/comm`` (``cmdline`` only for a name longer than the kernel keeps)."""
    if not names:
        return frozenset()
    prefixes = {n[:COMM_MAX] for n in names}
    procs = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as fh:
                comm = fh.read().rstrip("\n")
            if comm not in prefixes:
                continue
            with open(f"/proc/{entry.name}/stat") as fh:  # an exited child not yet reaped keeps its comm
                if fh.read().rpartition(")")[2].split()[:1] == ["Z"]:
                    continue
            argv0 = ""
            if len(comm) == COMM_MAX:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fb:
                    argv0 = fb.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        except OSError:
            continue  # gone meanwhile
        procs.append((comm, argv0))
    return matching_apps(names, procs)


def read_battery(root: str = "/sys/class/power_supply") -> bool | None:
    supplies: list[dict[str, str]] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return None
    for entry in entries:
        supply: dict[str, str] = {}
        for name in ("type", "online", "status"):
            try:
                with open(os.path.join(entry.path, name)) as fh:
                    supply[name] = fh.read().strip()
            except OSError:
                pass
        supplies.append(supply)
    return battery_from(supplies)


def hottest_gpu_c(devices: Sequence[Mapping[str, Any]]) -> int | None:
    """The hottest GPU's temperature in °C from NVML records (sandbox.gpus.temperature_records, or an
    inventory recording); a device whose reading failed is skipped; None when none answered (Rule 1)."""
    temps = [t for d in devices if type(t := d.get("nvmlDeviceGetTemperature")) is int]
    return max(temps) if temps else None


def foreign_gpu_from(devices: Sequence[Mapping[str, Any]], container_of: Callable[[int], str | None],
                     ours: Collection[str]) -> frozenset[int] | None:
    """NVML's GPU processes (sandbox.gpus.process_records) that run in none of our job containers
    (sandbox.nvml Rule 2: NVML gives host PIDs); None without a GPU (Rule 1)."""
    if not devices:
        return None
    seen = foreign_pids(devices, ())
    return frozenset(pid for pid in seen if container_of(pid) not in ours)
