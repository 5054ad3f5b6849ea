"""One job's container, as an async context manager over the docker SDK (trio shell).

    async with open_job(engine, plan, inputs={"a.txt": b"..."}) as job:
        await job.start()
        ...                       # job.stream_logs(send), run_meter(job, ...), job.pause() ...
        result = await job.wait() # enforces the plan's wall-clock deadline
        await job.export_outputs(path)

Rule 1: the container and its volume are removed in a shielded `finally` with a bounded budget,
whether the job completed, failed, or the task was cancelled.
Rule 2: the low-level API only (create_container + create_host_config): `containers.run` pulls
missing images silently and cannot set a stop timeout. The image is referenced by pinned id.
Rule 3: the deadline is ours (trio clock): docker's wait timeout is only an HTTP timeout. At the
deadline the container is stopped with the plan's grace (SIGTERM to the init, SIGKILL after).
Rule 4: a job is `killed_externally` when its container vanished, or the engine recorded a `kill`
event for it (docker stop / kill / rm -f) that this runner did not send: such an end is never
reported as a normal exit (docs/PROTOCOL.md's `killed_externally`).
Rule 5: a job's logs cost the provider in proportion to its log rate limit, not to what the job
writes: one thread per stream reads, splits and drops; the job's task forwards admitted lines in
batches; reading is held to READ_FACTOR times the limit (sandbox.logreader).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import docker.types
import trio

from sandbox.disk import make_disk, release_disk
from sandbox.engine import Engine
from sandbox.errors import SandboxError
from sandbox.jobio import (
    LogLine,
    LogRateLimit,
    input_tar,
    parse_log_line,
    stamp_key,
)
from sandbox.logreader import LOG_POLL_S, _LogReader
from sandbox.metering import Meter, MeterSample
from sandbox.outputs import OutputArchive, _export, _tempfile
from sandbox.plan import IO_DIR, ContainerPlan

log = logging.getLogger(__name__)
CLEANUP_BUDGET_S = 30
TAIL_LINES = 16


@dataclass(frozen=True)
class ExitResult:
    exit_code: int
    oom_killed: bool
    timed_out: bool  # stopped by our deadline
    final: MeterSample
    killed_externally: bool = False  # stopped, killed or removed on the engine by someone else (Rule 4)


def _create(api: docker.APIClient, plan: ContainerPlan) -> str:
    """Blocking: the named volume (on the job's own filesystem when it has a disk), then the hardened
    container (see sandbox.plan for the why)."""
    if plan.disk_file is not None:
        device = make_disk(Path(plan.disk_file), plan.disk_bytes)
        api.create_volume(name=plan.volume_name, driver="local", labels=dict(plan.labels),
                          driver_opts={"type": "ext4", "device": device, "o": "nosuid,nodev"})
    else:
        api.create_volume(name=plan.volume_name, labels=dict(plan.labels))
    devices = [docker.types.DeviceRequest(device_ids=list(plan.gpu_uuids),
                                          capabilities=[list(c) for c in plan.gpu_capabilities])]
    host_config = api.create_host_config(
        network_mode="none", read_only=True, tmpfs=dict(plan.tmpfs), cap_drop=["ALL"],
        mounts=[docker.types.Mount(target=IO_DIR, source=plan.volume_name, type="volume")],
        security_opt=list(plan.security_opt), pids_limit=plan.pids_limit, nano_cpus=plan.nano_cpus,
        mem_limit=plan.memory_bytes, memswap_limit=plan.memory_bytes, init=True,
        ulimits=[docker.types.Ulimit(name=n, soft=s, hard=h) for n, s, h in plan.ulimits],
        log_config=docker.types.LogConfig(type="json-file", config={
            "max-size": f"{plan.log_max_size_mib}m", "max-file": str(plan.log_max_files)}),
        runtime=plan.runtime, device_requests=devices if plan.gpu_uuids else None,
        oom_score_adj=plan.oom_score_adj, ipc_mode="private", privileged=False)
    created = api.create_container(
        image=plan.image_id, command=list(plan.command), environment=dict(plan.env), user=plan.user,
        working_dir=plan.working_dir, labels=dict(plan.labels), name=plan.name, hostname="sandbox",
        host_config=host_config, network_disabled=True, stop_timeout=plan.stop_timeout_s,
        use_config_proxy=False, tty=False, stdin_open=False)
    return str(created["Id"])

def _killed_by_others(api: docker.APIClient, container: str, since_s: float) -> bool:
    """Blocking: did the engine record a `kill` (docker stop / kill / rm -f) for `container` since
    `since_s`? Called only when this runner sent none (Rule 4); `until` makes the query return at once."""
    events = api.events(since=int(since_s) - 1, until=f"{time.time():.9f}", decode=True,
                        filters={"container": container, "event": ["kill"]})
    try:
        return any(e.get("Action") == "kill" for e in events)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def _remove(api: docker.APIClient, name: str, volume: str, disk_file: str | None = None) -> None:
    """Blocking: remove the container (if any), then its volume (if any), then the job's disk."""
    for remove, target in ((lambda n: api.remove_container(n, force=True, v=True), name),
                           (lambda n: api.remove_volume(n, force=True), volume)):
        try:
            remove(target)
        except docker.errors.NotFound:
            pass
    if disk_file is not None:
        release_disk(Path(disk_file))


class Job:
    """A created container; the methods are the job's life. Use through `open_job`."""

    def __init__(self, engine: Engine, plan: ContainerPlan) -> None:
        self.engine, self.api, self.plan = engine, engine.api, plan
        self.id = ""
        self.pid: int | None = None
        self.meter = Meter(plan.cpus_millicores)
        self.exited = trio.Event()
        self.result: ExitResult | None = None
        self._deadline: float | None = None
        self._started_wall_s = 0.0
        self._stopping = False  # this runner asked the engine to stop or kill the container (Rule 4)
        self._killed = False  # this runner sent SIGKILL (`kill`)
        self.skipped_outputs: tuple[tuple[str, str], ...] = ()

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    async def start(self) -> None:
        self._started_wall_s = time.time()
        await self.engine.call(self.api.start, self.id, what="start container")
        self.meter.event("start", self.now_ms())
        self._deadline = trio.current_time() + self.plan.deadline_ms / 1000
        state = (await self.engine.call(self.api.inspect_container, self.id))["State"]
        self.pid = int(state.get("Pid") or 0) or None

    async def pause(self) -> None:
        """Freeze every process of the job; the metered clock stops (metering Rule 1)."""
        now = self.now_ms()  # before the call: never bill the time the freeze takes
        await self.engine.call(self.api.pause, self.id, what="pause container")
        self.meter.event("pause", now)

    async def resume(self) -> None:
        await self.engine.call(self.api.unpause, self.id, what="unpause container")
        self.meter.event("resume", self.now_ms())

    @property
    def killed(self) -> bool:
        """This runner has sent the container SIGKILL (`kill`)."""
        return self._killed

    async def kill(self) -> None:
        """SIGKILL now, where it is: a paused job is killed frozen, never thawed. Marked as ours first
        (Rule 4), so the exit is never taken for someone else's kill; a graceful stop asked for later
        (or already under way) is not thawed or waited for."""
        self._stopping = self._killed = True
        try:
            await self.engine.call(self.api.kill, self.id, what="kill container")
        except SandboxError:
            self._killed = False  # not killed after all: a later stop must still do its work
            raise

    async def stop(self) -> None:
        """Stop with the plan's grace period (SIGTERM, then SIGKILL); a paused job is thawed first,
        unless it is being killed (`kill`)."""
        self._stopping = True
        if self._killed:
            return
        if self.meter.state == "paused":
            try:
                await self.resume()
            except SandboxError as exc:
                # Another task's unpause got there first (the owner left while a stop was asked
                # for): the engine says "not paused", the meter has not heard yet. The job runs
                # again, so the stop goes on; a real engine failure shows again in the stop below.
                log.info("unpause of %s before its stop: %s; stopping it anyway", self.id[:12], exc)
        try:
            await self.engine.call(self.api.stop, self.id, timeout=self.plan.stop_timeout_s,
                                   what="stop container")
        except SandboxError as exc:
            log.warning("stop of %s failed (%s); killing it", self.id[:12], exc)
            await self.engine.call(self.api.kill, self.id, what="kill container")

    async def wait(self) -> ExitResult:
        """Wait for the exit, enforcing the deadline (Rule 3); return the code, OOM flag and usage."""
        with trio.move_on_at(self._deadline if self._deadline is not None else math.inf) as scope:
            try:
                await self.engine.call(self.api.wait, self.id, timeout=None, own_thread=True, what="wait")
            except SandboxError as exc:
                if getattr(exc, "status", None) != 404:  # a vanished container is judged below (Rule 4)
                    raise
        timed_out = scope.cancelled_caught
        if timed_out:
            await self.stop()
            with trio.fail_after(self.plan.stop_timeout_s + 30):
                await self.engine.call(self.api.wait, self.id, timeout=None, own_thread=True)
        self.meter.event("stop", self.now_ms())
        try:
            state = (await self.engine.call(self.api.inspect_container, self.id))["State"]
        except SandboxError as exc:
            if getattr(exc, "status", None) != 404:
                raise
            state = {"ExitCode": -1}  # removed under us: someone else's doing (Rule 4)
            external = True
        else:
            external = not self._stopping and await self.engine.call(
                _killed_by_others, self.api, self.id, self._started_wall_s, what="events")
        self.result = ExitResult(exit_code=int(state.get("ExitCode", -1)),
                                 oom_killed=bool(state.get("OOMKilled")) or self.meter.oom_kills > 0,
                                 timed_out=timed_out,
                                 final=self.meter.sample(self.now_ms()),
                                 killed_externally=external)
        if external:
            log.warning("container %s was stopped or removed by someone else", self.id[:12])
        self.exited.set()
        return self.result

    async def stream_logs(self, send: trio.MemorySendChannel[LogLine], limit: LogRateLimit | None = None) -> None:
        """Send stdout and stderr lines as the engine's log driver receives them, until the exit.

        With a `limit`, lines beyond its rate are dropped here (and counted in it), before they cost
        anything further; reading itself is held to `READ_FACTOR` times the rate (Rule 5).
        """
        lock = threading.Lock()  # the two streams' reader threads share the limit
        async with trio.open_nursery() as nursery:
            for stream in ("stdout", "stderr"):
                nursery.start_soon(self._pump_logs, stream, send, limit, lock)

    async def _pump_logs(self, stream: str, send: trio.MemorySendChannel[LogLine],
                         limit: LogRateLimit | None = None, lock: threading.Lock | None = None) -> None:
        gen = await self.engine.call(self.api.logs, self.id, stdout=stream == "stdout",
                                     stderr=stream == "stderr", stream=True, follow=True,
                                     timestamps=True, what="logs")
        # One thread reads, splits and rate-limits the whole stream; this task only forwards what was
        # admitted, every LOG_POLL_S: a flood costs no trio wake-up or thread hop per line (Rule 5).
        reader = _LogReader(gen, limit, lock or threading.Lock())
        last_stamp = ""

        async def forward() -> None:
            nonlocal last_stamp
            for raw in reader.take():
                line = parse_log_line(stream, raw)
                last_stamp = line.timestamp or last_stamp
                await send.send(line)

        try:
            async with trio.open_nursery() as nursery:
                async def read() -> None:
                    await trio.to_thread.run_sync(reader.run, abandon_on_cancel=True,
                                                  limiter=trio.CapacityLimiter(1))
                    reader.done.set()

                nursery.start_soon(read)
                while not reader.done.is_set():
                    await forward()
                    with trio.move_on_after(LOG_POLL_S):
                        await reader.done.wait()
            await forward()
            if reader.error is not None:
                raise reader.error
            # The engine can store a process's last, unterminated line after a follow stream ended
            # (seen under load): look once more at the tail and pass on whatever is newer.
            for line in await self._tail_after(stream, last_stamp):
                if limit is None or reader.admit(len(line.text) + 32):
                    await send.send(line)
        except SandboxError as exc:  # the container went away under the stream: the stream ends
            log.info("log stream of %s ended: %s", self.id[:12], exc)
        finally:
            for raw in reader.take(flush=True):  # cancelled mid-line: what did arrive is still passed on
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    send.send_nowait(parse_log_line(stream, raw))
            gen.close()  # docker-py's CancellableStream: shuts the socket under a reader still blocked

    async def _tail_after(self, stream: str, last_stamp: str) -> list[LogLine]:
        data = await self.engine.call(self.api.logs, self.id, stdout=stream == "stdout",
                                      stderr=stream == "stderr", stream=False, follow=False, timestamps=True,
                                      tail=TAIL_LINES, what="logs")
        lines = [parse_log_line(stream, raw) for raw in bytes(data).split(b"\n") if raw]
        return [line for line in lines if stamp_key(line.timestamp) > stamp_key(last_stamp)]

    async def export_outputs(self, dest: Path, max_bytes: int | None = None) -> OutputArchive:
        """Write /io/out as a tar to `dest`, refusing more than `max_bytes` (the plan's cap)."""
        cap = self.plan.output_max_bytes if max_bytes is None else max_bytes
        return await self.engine.call(_export, self.api, self.id, Path(dest), cap, what="get outputs")

    async def read_outputs(self, max_bytes: int | None = None) -> bytes:
        """The outputs tar's bytes; what was skipped is in `skipped_outputs` (jobio Rule 3)."""
        tmp = Path(await trio.to_thread.run_sync(_tempfile))
        try:
            archive = await self.export_outputs(tmp, max_bytes)
            self.skipped_outputs = archive.skipped
            return await trio.Path(tmp).read_bytes()
        finally:
            await trio.Path(tmp).unlink(missing_ok=True)

@asynccontextmanager
async def open_job(engine: Engine, plan: ContainerPlan, *,
                   inputs: Mapping[str, bytes] | None = None) -> AsyncIterator[Job]:
    """Create the volume and container, put the inputs in; always remove both on exit (Rule 1)."""
    job = Job(engine, plan)
    try:
        job.id = await engine.call(_create, engine.api, plan, what="create container")
        await engine.call(engine.api.put_archive, job.id, IO_DIR, input_tar(inputs or {}),
                          what="put inputs")
        yield job
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLEANUP_BUDGET_S) as budget:
                try:
                    await engine.call(_remove, engine.api, plan.name, plan.volume_name, plan.disk_file,
                                      what="remove job")
                except SandboxError as exc:  # never mask the job's own outcome; the reaper retries
                    log.warning("cleanup of %s failed: %s", plan.name, exc)
            if budget.cancelled_caught:
                log.warning("cleanup of %s ran out of time; the reaper will remove it", plan.name)
