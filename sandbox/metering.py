"""Metering arithmetic: readings and run-state changes in, cumulative integer usage out (pure).

A `Meter` is fed the job's state changes (start, pause, resume, stop) and, about once a second, a
cgroup reading and (for GPU jobs) a GPU reading, each with `now_ms` from a monotonic clock. It returns
a `MeterSample`: cumulative usage since the job started, in integers, ready to go into a receipt.

Rule 1: wall_ms counts only running time; paused time (frozen cgroup) and time before start or after
stop are excluded.
Rule 2: every counter is cumulative and never decreases; a reading that goes backwards (a cgroup
recreated, a GPU counter reset) adds nothing rather than subtracting.
Rule 3: GPU SM% is integrated over running time only: gpu_sm_pct_ms += sm_pct × running ms since the
previous reading. A process absent from NVML's per-process utilisation counts 0 % (sandbox.nvml).
Rule 4: a sample never claims more CPU than the limit allows over its running time
(`cpu_bound_core_ms`, the check a buyer makes): the clock starts when `start` returns, a little after
the processes do, and that slack goes in the buyer's favour rather than failing the check.
"""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.cgroups import CgroupReading

STATES = ("created", "running", "paused", "stopped")
# (state, event) → next state; anything else is ignored (a duplicate event is not an error).
MOVES = {("created", "start"): "running", ("running", "pause"): "paused",
         ("paused", "resume"): "running", ("running", "stop"): "stopped",
         ("paused", "stop"): "stopped", ("created", "stop"): "stopped"}


@dataclass(frozen=True)
class GpuReading:
    """The job's GPU use at one moment, summed over its GPUs and host PIDs."""

    mem_bytes: int  # Σ usedGpuMemory of the job's processes
    sm_pct: int  # Σ SM % of the job's processes (may exceed 100 with several GPUs)
    energy_mj: int | None  # Σ board energy counters of the job's GPUs (cumulative, mJ)


@dataclass(frozen=True)
class MeterSample:
    """Cumulative usage of one job since it started; all integers (they go into signed receipts)."""

    seq: int
    state: str
    wall_ms: int
    cpu_core_ms: int
    mem_peak_bytes: int
    gpu_mem_peak_bytes: int
    gpu_sm_pct_ms: int
    energy_mj: int


class Meter:
    """The per-job accumulator. Pure: every method takes `now_ms`; nothing reads a clock."""

    def __init__(self, cpus_millicores: int | None = None) -> None:
        self.cpus_millicores = cpus_millicores
        self.state = "created"
        self.seq = 0
        self._wall_ms = 0
        self._since_ms: int | None = None  # start of the current running interval
        self._cpu_ns = 0
        self.oom_kills = 0  # evidence beside the engine's OOMKilled flag (docs/SANDBOX.md, Exit)
        self._mem_peak = 0
        self._gpu_mem_peak = 0
        self._sm_pct_ms = 0
        self._last_gpu_ms: int | None = None
        self._last_sm_pct = 0
        self._energy_base: int | None = None
        self._energy_mj = 0

    def event(self, name: str, now_ms: int) -> str:
        """Apply a run-state change ("start", "pause", "resume", "stop"); return the new state."""
        new = MOVES.get((self.state, name))
        if new is None:
            return self.state
        if self.state == "running" and self._since_ms is not None:
            self._wall_ms += max(0, now_ms - self._since_ms)
            self._since_ms = None
            if self._last_gpu_ms is not None:  # the last SM% reading covers the tail up to now
                self._sm_pct_ms += self._last_sm_pct * max(0, now_ms - self._last_gpu_ms)
                self._last_gpu_ms = None
        if new == "running":
            self._since_ms = now_ms
            self._last_gpu_ms = now_ms
            self._last_sm_pct = 0  # never bill a reading from before a pause for time after it
        self.state = new
        return new

    def wall_ms(self, now_ms: int) -> int:
        running = now_ms - self._since_ms if self.state == "running" and self._since_ms is not None else 0
        return self._wall_ms + max(0, running)

    def observe(self, now_ms: int, cgroup: CgroupReading | None = None,
                gpu: GpuReading | None = None) -> MeterSample:
        """Fold in the readings taken at `now_ms` and return the cumulative sample."""
        self.fold(now_ms, cgroup, gpu)
        return self.sample(now_ms)

    def fold(self, now_ms: int, cgroup: CgroupReading | None = None, gpu: GpuReading | None = None) -> None:
        """Fold in readings without emitting a sample (reads may be more frequent than samples)."""
        if cgroup is not None:
            self._cpu_ns = max(self._cpu_ns, cgroup.cpu_usage_ns)  # Rule 2
            peak = cgroup.mem_peak_bytes if cgroup.mem_peak_bytes is not None else cgroup.mem_current_bytes
            self._mem_peak = max(self._mem_peak, peak, cgroup.mem_current_bytes)
            self.oom_kills = max(self.oom_kills, cgroup.oom_kills or 0)
        if gpu is not None:
            self._fold_gpu(now_ms, gpu)

    def _fold_gpu(self, now_ms: int, gpu: GpuReading) -> None:
        self._gpu_mem_peak = max(self._gpu_mem_peak, gpu.mem_bytes)
        if self.state == "running" and self._last_gpu_ms is not None:
            self._sm_pct_ms += max(0, gpu.sm_pct) * max(0, now_ms - self._last_gpu_ms)  # Rule 3
        self._last_gpu_ms = now_ms if self.state == "running" else None
        self._last_sm_pct = max(0, gpu.sm_pct)
        if gpu.energy_mj is not None:
            if self._energy_base is None:
                self._energy_base = gpu.energy_mj
            self._energy_mj = max(self._energy_mj, gpu.energy_mj - self._energy_base)

    def sample(self, now_ms: int) -> MeterSample:
        self.seq += 1
        wall = self.wall_ms(now_ms)
        cpu = self._cpu_ns // 1_000_000
        if self.cpus_millicores is not None:  # Rule 4
            cpu = min(cpu, cpu_bound_core_ms(wall, self.cpus_millicores))
        return MeterSample(seq=self.seq, state=self.state, wall_ms=wall,
                           cpu_core_ms=cpu, mem_peak_bytes=self._mem_peak,
                           gpu_mem_peak_bytes=self._gpu_mem_peak, gpu_sm_pct_ms=self._sm_pct_ms,
                           energy_mj=self._energy_mj)


def cpu_bound_core_ms(wall_ms: int, cpus_millicores: int, period_ms: int = 100) -> int:
    """The most CPU a job limited to `cpus_millicores` can use in `wall_ms` of running time.

    CFS enforces the quota per period, so one period of slack covers a period that straddles the
    start of the interval. A buyer can check every receipt against this bound.
    """
    return (wall_ms + period_ms) * cpus_millicores // 1000
