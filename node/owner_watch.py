"""The provider's owner watch (issue 18, a trio shell): read the activity signals every ``poll_ms``, decide
the owner's state (node.owner_state, pure) and act on it.

    watch_owner(runtime, prefs) -- started by node.provider.open_provider when the config has [owner]

Rule 1: on a change of state the offer is re-issued at once (the publisher wakes on ``runtime.changed``):
no free capacity while the owner is active or outside the schedule (GPUs only, for a GPU-only reason),
and the market refuses every proposal with the reason (market.deal Rule 6), whichever offer it names.
Rule 2: running jobs get node.owner_state's pause, resume and stop through their ``on_owner`` hook
(node.owner_job); the hold is counted from the moment each job was paused.
Rule 3 (cheap, issue 18's budget of 0.1 % of a core on an idle provider): each poll stats the known
terminal and input devices (and /proc/stat where other programs' CPU is watched). The device list is
globbed again when ``/dev/pts`` changes (a terminal opened) and every ``SLOW_EVERY_S`` otherwise, when
the process table (exclusive applications) is scanned and the battery read too; NVML is asked only
where a GPU is offered and ``foreign_gpu`` is on. Nothing is read for a signal the preferences switch off.
Rule 4: other programs' CPU is /proc/stat less our job containers' cgroups and this daemon's own CPU,
averaged over ``CPU_WINDOW_S``: a single busy poll (the engine starting a job's container) is not the
owner, and the daemon's own work never counts as the owner's.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Any

import trio

from node import owner_signals as sig
from node.owner_prefs import OwnerPrefs
from node.owner_signals import DEVICE_GLOBS
from node.owner_state import AVAILABLE, OwnerHold, Verdict, decide
from sandbox.nvml import container_id_of

if TYPE_CHECKING:
    from node.provider import Announce, ProviderRuntime

__all__ = ["AVAILABLE", "DEVICE_GLOBS", "OwnerPrefs", "Verdict", "owner_status", "watch_owner"]  # node.provider's

log = logging.getLogger("suanli.node.owner")

SLOW_EVERY_S = 2.0
# Rule 4: other programs' CPU is averaged over this long, so that a burst (the engine starting a job's
# container, one busy poll) is not taken for the owner, and this daemon's own CPU is never theirs.
CPU_WINDOW_S = 1.0
RUNNING_PHASES = frozenset({"running", "paused", "resumed"})  # the container runs (ActiveJob.phase)


class SignalReader:
    """The machine's readings for ``prefs`` (blocking, cheap: Rule 3)."""

    def __init__(self, prefs: OwnerPrefs, device_globs: Sequence[str], gpu_uuids: Sequence[str],
                 our_cpu_files: Callable[[], Iterable[str]], our_containers: Callable[[], set[str]]) -> None:
        self.prefs, self.globs, self.gpu_uuids = prefs, tuple(device_globs), tuple(gpu_uuids)
        self.our_cpu_files, self.our_containers = our_cpu_files, our_containers
        self.devices: list[str] = []
        self.pts_mtime: float | None = None
        self.on_battery: bool | None = None
        self.cpu_files_now: list[str] = []
        self.containers_now: set[str] = set()
        self.nvml: ExitStack | None = None
        self.nvml_problem: str | None = None
        self.running: frozenset[str] = frozenset()
        self.gpu_temp_c: int | None = None
        self.slow_at = -1e18
        self.cpu_window: collections.deque[tuple[float, tuple[int, int], int]] = collections.deque()
        self.cores = os.cpu_count() or 1

    def snapshot(self) -> None:
        """Our jobs' cgroup files and containers, taken in the trio thread (the jobs change there)."""
        self.cpu_files_now, self.containers_now = list(self.our_cpu_files()), set(self.our_containers())

    def read(self, now_s: float, mono_s: float) -> sig.Readings:
        """Blocking where NVML is asked; call ``snapshot`` first."""
        p = self.prefs
        watch_input = p.input and p.idle_s > 0
        pts = _mtime("/dev/pts") if watch_input else None
        if mono_s - self.slow_at >= SLOW_EVERY_S or pts != self.pts_mtime:
            self.pts_mtime = pts
            self.devices = sig.watched_devices(self.globs) if watch_input else []
        if mono_s - self.slow_at >= SLOW_EVERY_S:
            self.slow_at = mono_s
            names = (*p.exclusive_apps, *p.exclusive_gpu_apps)
            self.running = sig.read_running(names) if names else frozenset()
            self.on_battery = sig.read_battery() if not p.sell_on_battery else None
            self.gpu_temp_c = self._gpu_temp() if p.gpu_max_temp_c > 0 and self.gpu_uuids else None
        return sig.Readings(
            now_s=now_s,
            last_input_s=sig.read_last_input(self.devices) if watch_input else None,
            foreign_gpu_pids=self._foreign_gpu() if p.foreign_gpu and self.gpu_uuids else None,
            other_cpu_pct=self._other_cpu(mono_s) if p.cpu_busy_pct > 0 else None,
            running=self.running, on_battery=self.on_battery, gpu_temp_c=self.gpu_temp_c)

    def _other_cpu(self, mono_s: float) -> float | None:
        """Rule 4: other programs' share of all cores over the last CPU_WINDOW_S (None until the window is
        full): /proc/stat less our job containers' cgroups and this daemon's own CPU."""
        cur = sig.read_proc_stat()
        if cur is None:
            return None
        ours = sig.read_cgroup_usage_us(self.cpu_files_now) + int(time.process_time() * 1_000_000)
        window = self.cpu_window
        window.append((mono_s, cur, ours))
        while len(window) > 2 and mono_s - window[1][0] >= CPU_WINDOW_S:
            window.popleft()
        then, prev, prev_ours = window[0]
        if mono_s - then < CPU_WINDOW_S:
            return None
        return sig.other_cpu_pct(prev, cur, max(0, ours - prev_ours), self.cores, os.sysconf("SC_CLK_TCK"))

    @property
    def watches_gpu(self) -> bool:
        """NVML is asked (blocking: the watch then reads in a worker thread)."""
        p = self.prefs
        return (p.foreign_gpu or p.gpu_max_temp_c > 0) and bool(self.gpu_uuids) and self.nvml_problem is None

    def _nvml_ready(self) -> bool:
        from sandbox.gpus import nvml_session

        if self.nvml is None:  # one NVML session for the watch's life: nvmlInit is far too dear per poll
            self.nvml = ExitStack()
            self.nvml_problem = self.nvml.enter_context(nvml_session())
        return self.nvml_problem is None

    def _foreign_gpu(self) -> frozenset[int] | None:
        from sandbox.gpus import pid_container_id, process_records

        if not self._nvml_ready():
            return None
        devices: list[dict[str, Any]] = process_records(self.gpu_uuids, int(time.time() * 1e6))
        return sig.foreign_gpu_from(devices, pid_container_id, self.containers_now)

    def _gpu_temp(self) -> int | None:
        """The hottest GPU, read at the slow cadence (temperature moves in seconds, not polls)."""
        from sandbox.gpus import temperature_records

        return sig.hottest_gpu_c(temperature_records(self.gpu_uuids)) if self._nvml_ready() else None

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.close()
            self.nvml = None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def owner_status(verdict: Verdict | None) -> dict[str, object] | None:
    """``suanli status``'s owner part: the state and its reason (None: no [owner] section)."""
    if verdict is None:
        return None
    return {"state": verdict.state, "reason": verdict.reason, "gpu_only": verdict.gpu_only,
            "window_end_ms": None if verdict.window_end_s is None else int(verdict.window_end_s * 1000)}


def apply_verdict(runtime: ProviderRuntime, verdict: Verdict, *, changed: bool = True) -> None:
    """Rule 1: what the offer and the market say (never reopens a provider that is shutting down);
    ``changed``: a new state, so the publisher wakes to re-issue the offer."""
    runtime.owner = verdict
    if runtime.accepting:
        open_ = verdict.state == AVAILABLE or verdict.gpu_only
        runtime.market.accepting = True if open_ else f"{verdict.state}: {verdict.reason}"
    if changed:
        runtime.changed.set()


async def watch_owner(runtime: ProviderRuntime, prefs: OwnerPrefs, announce: Announce | None = None, *,
                      device_globs: Sequence[str] = DEVICE_GLOBS,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Poll, decide, act (see the module docstring); ``announce`` is unused here: the publisher announces."""
    services = runtime.services

    def cpu_files() -> list[str]:
        return [f for job in services.active.values() if (f := job.cpu_usage_file) is not None]

    # A job's cgroup path names its container (sandbox.nvml Rule 2), and so its GPU processes.
    reader = SignalReader(prefs, device_globs, [g.uuid for g in runtime.gpus], cpu_files,
                          lambda: {c for f in cpu_files() if (c := container_id_of(f)) is not None})
    try:
        await _watch(runtime, prefs, reader, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reader.close)


async def _watch(runtime: ProviderRuntime, prefs: OwnerPrefs, reader: SignalReader,
                 task_status: trio.TaskStatus[None]) -> None:
    services = runtime.services
    hold = OwnerHold(prefs)
    last: Verdict | None = None
    started = False
    while True:
        now = time.time()
        reader.snapshot()
        if reader.watches_gpu:  # NVML blocks: a worker thread (docs/STYLE.md 2)
            readings = await trio.to_thread.run_sync(reader.read, now, time.monotonic())
        else:
            readings = reader.read(now, time.monotonic())
        verdict = decide(prefs, readings, datetime.fromtimestamp(now).astimezone())
        # Only a new state re-issues the offer; a reason that merely ages ("used 3 s ago") is shown.
        changed = last is None or (verdict.state, verdict.gpu_only) != (last.state, last.gpu_only)
        if changed:
            log.info("owner: %s%s", verdict.state, f" ({verdict.reason})" if verdict.reason else "")
        apply_verdict(runtime, verdict, changed=changed)
        last = verdict
        jobs = {ag: bool(job.allocation.gpu_uuids) for ag, job in services.active.items()
                if job.phase in RUNNING_PHASES}
        for kind, ag in hold.step(verdict, jobs, now):
            job = services.active.get(ag)
            if job is not None:
                job.on_owner(kind)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(prefs.poll_ms / 1000)
