"""The once-a-second metering loop of one job (trio shell over sandbox.cgroups and sandbox.gpus).

Sources, in order of preference (docs/SANDBOX.md):
- CPU and memory: the container's cgroup files, found from its init PID (v1 or v2); if the engine is
  not on this host, the Engine API stats call (`one_shot`, no long-lived stream).
- GPU (GPU jobs only): NVML per-process memory and SM % of the container's host PIDs, and the board
  energy counter of its GPUs, through sandbox.gpus.JobGpuProbe.

Rule 1: the loop owns no state of its own: every reading goes into the job's pure `Meter`, which also
receives the pause/resume/stop events from the runner, so the clock and the counters cannot disagree.
Rule 2: a failed reading is skipped (the counters are cumulative, the next one catches up); the loop
ends by itself once the job has exited, after sending the final sample.
Rule 3: after the first sample (taken at once), samples fall on a grid shared by every job of the
process: multiples of the interval on trio's clock, kept by one Metronome task per process. A
provider's jobs then wake together once a second and their receipts share one group commit
(settlement.astore Rule 3); billing is unaffected, since each sample carries the job's own metered
milliseconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from sandbox.cgroups import CgroupFiles, CgroupPaths, CgroupReading, find_cgroup, reading_from_stats
from sandbox.errors import SandboxError
from sandbox.gpus import JobGpuProbe
from sandbox.metering import GpuReading, MeterSample
from sandbox.runner import Job

log = logging.getLogger(__name__)


class UsageReader(Protocol):
    source: str

    async def read(self) -> CgroupReading | None: ...


class CgroupFileReader:
    """Reads inline, not in a worker thread: cgroupfs files are made from kernel memory and never
    wait on a disk (five files: ~50 us inline, ~150 us through a thread, measured on CI). The files
    stay open between readings (sandbox.cgroups.CgroupFiles); ``close`` releases them."""

    source = "cgroup-files"

    def __init__(self, paths: CgroupPaths) -> None:
        self.paths = paths
        self.source = f"cgroup-v{paths.version}-files"
        self._files = CgroupFiles(paths)

    async def read(self) -> CgroupReading | None:
        return self._files.read()

    def close(self) -> None:
        self._files.close()


class StatsApiReader:
    source = "engine-stats-api"

    def __init__(self, job: Job) -> None:
        self.job = job

    async def read(self) -> CgroupReading | None:
        doc = await self.job.engine.call(self.job.api.stats, self.job.id, stream=False, one_shot=True,
                                         what="stats")
        return reading_from_stats(doc)


async def open_usage_reader(job: Job, *, prefer_files: bool = True) -> UsageReader:
    """Cgroup files when the container's PID is visible on this host, else the stats API."""
    if prefer_files and job.pid is not None:
        paths = await trio.to_thread.run_sync(find_cgroup, job.pid)
        if paths is not None:
            return CgroupFileReader(paths)
    return StatsApiReader(job)


async def _read(job: Job, reader: UsageReader, gpu: JobGpuProbe | None) -> None:
    cgroup: CgroupReading | None = None
    gpu_reading: GpuReading | None = None
    try:
        cgroup = await reader.read()
        if gpu is not None:
            gpu_reading = await trio.to_thread.run_sync(gpu.read)
    except SandboxError as exc:  # Rule 2
        log.info("a metering read of %s failed: %s", job.id[:12], exc)
    job.meter.fold(job.now_ms(), cgroup, gpu_reading)


def grid_start(now: float, interval_s: float) -> float:
    """The grid point at or before ``now``: the next sample is due one interval after it (Rule 3)."""
    return math.floor(now / interval_s) * interval_s


class Metronome:
    """The process's one clock for meters (Rule 3): a meter asks for an event at a time, and one task
    sets every event that is due. Fifty jobs then cost one timer a second, not fifty (in trio each
    timer is a cancel scope whose expiry raises and catches an exception: measured at 10-20 % of a
    provider's Python time with 50 jobs)."""

    def __init__(self) -> None:
        self._due: dict[float, list[trio.Event]] = {}
        self._earlier = trio.Event()  # a time before the one being slept to was asked for
        self._sleeping_until = math.inf
        self._running = False

    def at(self, when: float) -> trio.Event:
        """An event set at ``when`` on trio's clock (at once if that has passed)."""
        event = trio.Event()
        self._due.setdefault(when, []).append(event)
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="suanli-metronome")
        elif when < self._sleeping_until:
            self._earlier.set()
        return event

    async def _run(self) -> None:
        try:
            while self._due:
                when = min(self._due)
                self._sleeping_until, self._earlier = when, trio.Event()
                with trio.move_on_at(when):
                    await self._earlier.wait()
                now = trio.current_time()
                for due in [t for t in self._due if t <= now]:
                    for event in self._due.pop(due):
                        event.set()
        finally:
            self._running, self._sleeping_until = False, math.inf


_METRONOME: trio.lowlevel.RunVar[Metronome] = trio.lowlevel.RunVar("suanli_metronome")


def metronome() -> Metronome:
    """This trio run's metronome."""
    try:
        return _METRONOME.get()
    except LookupError:
        found = Metronome()
        _METRONOME.set(found)
        return found


class Sampler:
    """The metering loop as calls its owner makes: ``await sampler.next()`` is the job's next sample.

    The first call reads at once; each later call waits for the next point of the process's grid
    (Rule 3), reading ``cpu_reads_per_sample - 1`` times on the way, then reads and samples. Once the
    job has exited it returns the job's final sample (if it has one), then None. A job's own loop
    (node.provider_job) calls it directly: no metering task and no channel between the two, so a
    sample costs one task wake-up fewer. Made by ``open_sampler``.
    """

    def __init__(self, job: Job, reader: UsageReader, gpu: JobGpuProbe | None, interval_s: float,
                 reads: int) -> None:
        self.job = job
        self.reader = reader
        self.gpu = gpu
        self.interval_s = interval_s
        self.reads = reads
        self._clock = metronome()
        self._tick: float | None = None  # the grid point of the latest sample
        self._wake = trio.Event()  # set by the metronome at each due time, or by the job's exit
        self._ended = False

    @property
    def source(self) -> str:
        return self.reader.source

    async def next(self) -> MeterSample | None:
        job = self.job
        if self._ended:
            return None
        if self._tick is None:
            self._tick = grid_start(trio.current_time(), self.interval_s)  # Rule 3
        elif not job.exited.is_set():
            await self._wait_for_tick()
        if job.exited.is_set():
            self._ended = True
            return job.result.final if job.result is not None else None
        await _read(job, self.reader, self.gpu)
        return job.meter.sample(job.now_ms())

    async def _wait_for_tick(self) -> None:
        assert self._tick is not None
        job, reads = self.job, self.reads
        for i in range(1, reads + 1):
            self._wake = self._clock.at(self._tick + self.interval_s * i / reads)
            if job.exited.is_set():
                break
            await self._wake.wait()
            if job.exited.is_set() or i == reads:
                break
            await _read(job, self.reader, None)
        self._tick += self.interval_s

    async def _exit_wakes_the_meter(self) -> None:
        await self.job.exited.wait()
        self._wake.set()


@asynccontextmanager
async def open_sampler(job: Job, *, interval_s: float = 1.0, cpu_reads_per_sample: int = 1,
                       prefer_files: bool = True) -> AsyncIterator[Sampler]:
    """A ``Sampler`` for ``job`` (see ``run_meter`` for the parameters); its GPU probe, if any, is
    closed on the way out. SandboxError when a GPU job cannot be metered."""
    reader = await open_usage_reader(job, prefer_files=prefer_files)
    reads = max(1, cpu_reads_per_sample if isinstance(reader, CgroupFileReader) else 1)
    gpu = JobGpuProbe(job.plan.gpu_uuids, job.id) if job.plan.gpu_uuids else None
    if gpu is not None:
        reason = await trio.to_thread.run_sync(gpu.open)
        if reason is not None:
            raise SandboxError(f"a GPU job cannot be metered: {reason}", container=job.id)
    try:
        async with trio.open_nursery() as nursery:
            sampler = Sampler(job, reader, gpu, interval_s, reads)
            nursery.start_soon(sampler._exit_wakes_the_meter)
            yield sampler
            nursery.cancel_scope.cancel()
    finally:
        if isinstance(reader, CgroupFileReader):
            reader.close()
        if gpu is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(gpu.close)


async def run_meter(job: Job, send: trio.MemorySendChannel[MeterSample], *, interval_s: float = 1.0,
                    cpu_reads_per_sample: int = 1, prefer_files: bool = True,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Send a cumulative sample every `interval_s` while the job runs, then the final one.

    The cgroup files vanish when the container exits, so the CPU used after the last read (at most
    interval/`cpu_reads_per_sample`) goes unmetered, in the buyer's favour. More reads per sample
    shrink that gap but each costs a wake-up (measured ~0.4-1.3 ms of CPU on a 2-vCPU VM, far more
    than the ~50 us read itself); bench/sandbox.py shows the cost. GPU readings are taken once per
    sample. The same loop as a task of its own, for callers that want samples on a channel.
    """
    async with open_sampler(job, interval_s=interval_s, cpu_reads_per_sample=cpu_reads_per_sample,
                            prefer_files=prefer_files) as sampler:
        task_status.started(sampler.source)
        while (sample := await sampler.next()) is not None:
            await send.send(sample)
