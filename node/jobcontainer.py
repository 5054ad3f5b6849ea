"""The container side of one provider job (a trio shell): plan it, run it, forward its logs, and feed
the session its meter samples and exit, performing the session's pause, resume and kill against the
runner (sandbox.runner). One part of ``node.provider_job.JobRun``, as go-libp2p splits its swarm by
concern; the stream and store side is there.

Rule 1: the meter runs in the supervising loop, not as a task of its own (sandbox.meter.Sampler), and
its samples stay on the process's grid.
Rule 2: a kill goes through the runner, which marks it as its own, and the stop reason is set before it:
the exit it causes is never taken for someone else's (killed_externally).
Rule 3 (M5): log lines beyond the operator's rate are dropped in the runner's reader thread, before
they cost a wake-up here or a frame to the buyer; the buyer gets one note with the count at the end.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from node.jobsession import PAUSE_DETAIL, Kill, Pause, Resume, Stop, Store
from p2p.clock import monotonic_ms, wall_ms  # re-exported for node.provider_job and node.jobupload
from p2p.errors import SuanliError
from p2p.job_wire import CHUNK_BYTES, Log
from sandbox.jobio import LogRateLimit
from sandbox.meter import open_sampler
from sandbox.metering import MeterSample
from sandbox.prepare import prepare_job
from sandbox.spec import SandboxJob

if TYPE_CHECKING:
    from node.provider_job import JobRun

log = logging.getLogger("suanli.node.job")

LOGS_DROPPED = "logs_dropped"  # a Status phase: its detail says how many log bytes the rate limit dropped
LOG_TAIL_S = 5.0  # how long the last log lines may take to arrive after the job exits


class ContainerSide:
    """The runner's half of ``JobRun`` (its attributes are JobRun's)."""

    async def plan(self: JobRun, image_id: str):  # type: ignore[no-untyped-def,misc]
        """The container plan, by sandbox.prepare's one preparation (the engine probed once at start)."""
        ag, r = self.ag, self.ag.resources
        spec = SandboxJob(image_id=image_id, command=tuple(ag.job.command), env=dict(ag.job.env),
                          cpus_millicores=max(1, r.cpu_millis), memory_mib=max(1, r.memory_mib), gpus=r.gpus,
                          gpu_model=r.gpu_model, max_duration_ms=ag.max_duration_ms, disk_mib=max(1, r.disk_mib))
        gpus = [self.s.gpus[u] for u in self.active.allocation.gpu_uuids]
        # H4: free disk is checked where the job's disk is reserved, in a worker thread (sandbox.plan Rule 3).
        return await prepare_job(self.s.engine, spec, self.s.policy, node_id=self.s.node_id,
                                 agreement_id=self.active.agreement.record_id.hex(), job_key=os.urandom(4).hex(),
                                 free_gpus=gpus, facts=self.s.facts)

    async def _supervise(self: JobRun, job, outer: trio.Nursery) -> MeterSample | None:  # type: ignore[no-untyped-def,misc]
        logs_send, logs = trio.open_memory_channel(256)
        last: MeterSample | None = None

        def stop_soon() -> None:
            outer.start_soon(stop_quietly, job)

        pump_scope = trio.CancelScope()
        # M5: lines beyond the operator's rate are dropped in the runner's reader thread, before they cost
        # a wake-up here or a frame to the buyer; the buyer gets one note with the count at the end.
        limit = LogRateLimit(self.s.policy.log_rate_bytes_per_s, self.s.policy.log_burst_bytes)

        async def pump_logs() -> None:
            async with logs_send:  # closing it ends forward_logs once every line is through
                with pump_scope:
                    await job.stream_logs(logs_send, limit)

        async def forward_logs() -> None:
            # Never closes its receive side early (see the samples loop below); it ends with the senders.
            async for line in logs:
                self.outbox.log_line(self.session.send(
                    Log(line.stream, line.text.encode("utf-8", "replace")[:CHUNK_BYTES])).message)
            logs_done.set()
            if (note := limit.note()) is not None:
                self.note(LOGS_DROPPED, note)

        async def watch_stop() -> None:
            await self.active.stop_requested.wait()
            await stop_quietly(job)

        logs_done = trio.Event()
        async with trio.open_nursery() as log_nursery:
            log_nursery.start_soon(pump_logs)
            log_nursery.start_soon(forward_logs)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_quietly, job)
                nursery.start_soon(self.read_buyer, stop_soon)
                nursery.start_soon(watch_stop)
                # The meter runs in this loop, not as a task of its own: one wake-up and one channel
                # fewer per receipt (sandbox.meter.Sampler). Samples stay on the process's grid.
                async with open_sampler(job, interval_s=self.ag.terms.interval_ms / 1000) as sampler:
                    while (sample := await sampler.next()) is not None:
                        last = sample
                        if job.exited.is_set():
                            break
                        await self._tick(job, sample)
                nursery.cancel_scope.cancel()
            # The job has exited: its last lines may still be on their way from the engine.
            with trio.move_on_after(LOG_TAIL_S):
                await logs_done.wait()
            if not logs_done.is_set():  # stop waiting for the engine, but pass on what did arrive
                pump_scope.cancel()
                with trio.move_on_after(2):
                    await logs_done.wait()
            log_nursery.cancel_scope.cancel()
        for action in self.session.container_exited(job.result is not None and job.result.killed_externally):
            if isinstance(action, Stop):  # M6: never reported as completed
                self.active.request_stop(action.reason)
        # Keep reading the buyer: the final countersignature comes later.
        self._reading = True
        outer.start_soon(self.read_buyer, lambda: None)
        return job.result.final if job.result is not None else last

    async def _tick(self: JobRun, job, sample: MeterSample) -> None:  # type: ignore[no-untyped-def,misc]
        """Perform what the session makes of one sample: pause, resume, kill, receipt n+1."""
        for action in self.session.meter_sampled(sample, monotonic_ms(), wall_ms(), exited=job.exited.is_set(),
                                                 killed=job.killed):
            try:
                if isinstance(action, Pause):
                    log.info("job %s: pausing (%s)", self.ag_hex, action.reason)
                    await job.pause()
                    self.status("paused", PAUSE_DETAIL.get(action.reason, action.reason))
                elif isinstance(action, Resume):
                    await job.resume()
                    self.status("resumed")
                elif isinstance(action, Kill):
                    # The reason is set before the kill, and the kill goes through the runner, which marks
                    # it as its own: the exit it causes is never taken for someone else's.
                    log.warning("job %s: %s; killing it", self.ag_hex, action.why)
                    if self.session.stop_reason is not None:
                        self.active.request_stop(self.session.stop_reason)
                    await job.kill()
                elif isinstance(action, Store):
                    await self.issue(action)
            except SuanliError as exc:
                if isinstance(action, Store):
                    raise
                log.info("job %s: %s", self.ag_hex, exc)  # the container exited between the check and the call


async def stop_quietly(job) -> None:  # type: ignore[no-untyped-def]
    try:
        await job.stop()
    except SuanliError as exc:
        log.info("stopping %s: %s", job.id[:12], exc)


async def wait_quietly(job) -> None:  # type: ignore[no-untyped-def]
    try:
        await job.wait()
    except SuanliError as exc:
        log.warning("waiting for %s failed: %s", job.id[:12], exc)
        job.exited.set()
