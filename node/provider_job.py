"""The provider's side of ``/suanli/job/1.0.0`` (a trio shell): run one agreed job and bill it second by second.

    start -> image (asked for only if missing) -> inputs -> container -> receipts + logs -> final receipt
    -> its countersignature -> outputs -> done

The rules live in the pure session (node.jobsession_provider: the table, receipts, the exposure guard,
pause reasons, the final reason); this shell performs its actions against the runner, the store and
the stream, and feeds it events. Transfers are node.jobupload's.
Rule 1: nothing is acknowledged before it is durable (the session's ``Store`` comes first).
Rule 2: the job loop never blocks on the buyer: messages go through an Outbox.
Rule 3: whatever happens (buyer gone, cancel, shutdown, an engine error), the chain ends with a final
receipt whose reason says why, and the container and volume are removed (sandbox.runner).
Rule 4: outputs leave only after the buyer countersigned the final receipt. A job paused for a silent
buyer is killed where it is frozen, never thawed for a graceful stop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from market.capacity import Allocation
from market.records import Agreement, Proposal
from node.jobsession import PAUSE_DETAIL, Kill, Pause, Resume, Send, Stop, Store
from node.jobsession_provider import ProviderSession
from node.jobupload import (  # noqa: F401  (re-exported: node.provider, tests)
    IMAGE_DISK_BUDGET_BYTES,
    IMAGE_UPLOADS,
    UPLOAD_ALLOWANCE_S,
    UPLOAD_WINDOW_S,
    expect,
    prepare,
    send_blob,
)
from node.jobwire import CHUNK_BYTES, Countersign, Fail, Log, Start, decode_message
from node.outbox import Outbox
from p2p.envelope import Signed, open_countersigned
from p2p.errors import CodecError, RemoteProtocolError, SuanliError
from p2p.framing import FramedStream
from p2p.identity import NodeKey, public_from_peer_id
from sandbox.engine import Engine
from sandbox.images import image_env
from sandbox.jobio import LogRateLimit
from sandbox.meter import open_sampler
from sandbox.metering import MeterSample
from sandbox.plan import plan_container
from sandbox.runner import open_job
from sandbox.spec import EngineFacts, GpuInfo, ProviderPolicy
from sandbox.spec import JobSpec as SandboxJob
from settlement.astore import AsyncStore
from settlement.records import PROVIDER_FAULT, Receipt

log = logging.getLogger("suanli.node.job")

MAX_WIRE_OUTPUT_BYTES = 256 << 20
OUTPUTS_SKIPPED = "outputs_skipped"  # a Status phase: the /io/out entries not handed back, and why
LOGS_DROPPED = "logs_dropped"  # a Status phase: its detail says how many log bytes the rate limit dropped
LOG_TAIL_S = 5.0  # how long the last log lines may take to arrive after the job exits
START_TIMEOUT_S = 30.0  # a job stream must name its agreement within this


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """For durations (the exposure guard's timeouts): a wall clock that steps would stretch or cut them."""
    return time.monotonic_ns() // 1_000_000


@dataclass
class ActiveJob:
    """An agreement the provider has confirmed, from countersignature to final receipt."""

    agreement: Signed[Agreement]
    proposal: Signed[Proposal]
    allocation: Allocation
    started: bool = False
    phase: str = "agreed"
    metered_ms: int = 0
    amount_micros: int = 0
    cosigned_micros: int = 0
    stop_reason: str | None = None
    stop_requested: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    on_stop: Callable[[str], object] = field(default=lambda reason: None, repr=False, compare=False)  # the session

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.on_stop(self.stop_reason)
        self.stop_requested.set()


@dataclass
class JobServices:
    """What running a job needs from the daemon."""

    key: NodeKey
    store: AsyncStore
    engine: Engine
    facts: EngineFacts
    policy: ProviderPolicy
    gpus: dict[str, GpuInfo]
    node_id: str
    active: dict[bytes, ActiveJob]
    on_finished: Callable[[ActiveJob, Receipt | None, bool], None]  # (job, final receipt, final countersigned)
    image_dir: Path | None = None  # uploads, clean copies and the buyer image ledger (None: a temporary folder)


class JobRun:
    """One job on one stream (see the module docstring)."""

    def __init__(self, services: JobServices, active: ActiveJob, framed: FramedStream) -> None:
        self.s, self.active, self.framed = services, active, framed
        self.outbox = Outbox(framed)
        self.ag = active.agreement.record
        self.session = ProviderSession(active.agreement, services.key)
        self._issued_by_body = self.session.issued_by_body
        self.final_cosigned = trio.Event()
        self._reading = False
        self.outer: trio.Nursery
        active.on_stop = self.session.stop_requested  # one first reason, whoever asks (the daemon or us)
        if active.stop_reason is not None:
            self.session.stop_requested(active.stop_reason)

    @property
    def ag_hex(self) -> str:
        return self.session.tag

    def status(self, phase: str, detail: str = "") -> None:
        self.active.phase = phase
        self.note(phase, detail)

    def note(self, phase: str, detail: str) -> None:
        """A status that is not a phase of the job (``outputs_skipped``, ``logs_dropped``)."""
        self.outbox.control(self.session.status(phase, wall_ms(), detail).message)

    async def issue(self, store: Store) -> Signed[Receipt]:
        await self.s.store.append_receipt(store.receipt)  # Rule 1: durable before it is sent
        for action in self.session.stored(store.receipt, monotonic_ms()):
            if isinstance(action, Send):
                self.outbox.control(action.message)
        r = store.receipt.record
        self.active.metered_ms, self.active.amount_micros = r.metered_ms, r.amount_micros
        return store.receipt

    async def read_buyer(self, job_stop: Callable[[], None]) -> None:
        """Countersignatures and cancels from the buyer, until the stream ends."""
        while True:
            try:
                payload = await self.framed.receive_frame()
            except RemoteProtocolError as exc:
                log.info("job %s: buyer stream broke: %s", self.ag_hex, exc)
                return
            if payload is None:
                return
            try:
                try:
                    msg = decode_message(payload)
                except CodecError as exc:
                    self.session.bad_frame(f"undecodable frame from the buyer (treated as missing): {exc}")
                    continue
                if isinstance(msg, Countersign):
                    await self.take_countersignature(msg.receipt)
                    continue
                for action in self.session.message_received(msg):
                    if isinstance(action, Stop):
                        self.active.request_stop(action.reason)
                        job_stop()
            except RemoteProtocolError:
                return  # stop listening; the exposure guard treats the buyer as silent

    async def take_countersignature(self, data: bytes) -> None:
        for action in self.session.countersignature_received(data):
            if not isinstance(action, Store):
                continue
            # Stored, then counted, as one step that a cancellation cannot split (Rule 1).
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.s.store.append_receipt(action.receipt)
                self.session.stored(action.receipt, monotonic_ms())
                self.active.cosigned_micros = self.session.guard.cosigned_amount
                if self.session.final_cosigned:
                    self.final_cosigned.set()

    def _countersigned_as_issued(self, data: bytes) -> Signed[Receipt] | None:
        """The session's fast path (p2p.envelope.open_countersigned), for tests/node/test_provider_job_cpu."""
        return open_countersigned(data, self._issued_by_body)

    async def _prepare_unless_stopped(self, start: Start) -> tuple[str, dict[str, bytes]]:
        """``prepare``, abandoned when the daemon asks every job to stop (graceful shutdown)."""
        result: list[tuple[str, dict[str, bytes]]] = []
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                async def work() -> None:
                    result.append(await prepare(self.s.engine, self.s.image_dir, self.framed, self.ag.job, start,
                                                self.status, self.outbox.drained, allowance_s=UPLOAD_ALLOWANCE_S,
                                                window_s=UPLOAD_WINDOW_S))
                    self.session.transfer_done("inputs")
                    nursery.cancel_scope.cancel()

                async def watch() -> None:
                    await self.active.stop_requested.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(work)
                nursery.start_soon(watch)
        except* trio.TooSlowError:
            failure = RemoteProtocolError("the buyer's upload was too slow", peer=self.framed.peer)
        except* (SuanliError, OSError) as group:
            failure = first_leaf(group)
        if failure is not None:
            raise failure
        if not result:
            raise SuanliError(f"the job was stopped before it started ({self.active.stop_reason})",
                              reason=self.active.stop_reason or PROVIDER_FAULT)
        return result[0]

    def plan(self, image_id: str, env: list[str]):  # type: ignore[no-untyped-def]
        ag, r = self.ag, self.ag.resources
        spec = SandboxJob(image_id=image_id, command=tuple(ag.job.command), env=dict(ag.job.env),
                          cpus_millicores=max(1, r.cpu_millis), memory_mib=max(1, r.memory_mib), gpus=r.gpus,
                          gpu_model=r.gpu_model, max_duration_ms=ag.max_duration_ms, disk_mib=max(1, r.disk_mib))
        gpus = [self.s.gpus[u] for u in self.active.allocation.gpu_uuids]
        # H4: free disk is checked where the job's disk is reserved, in a worker thread (sandbox.plan Rule 3).
        return plan_container(spec, self.s.policy, self.s.facts, image_env=env, free_gpus=gpus,
                              node_id=self.s.node_id, agreement_id=self.active.agreement.record_id.hex(),
                              job_key=os.urandom(4).hex())

    async def run(self, start: Start) -> None:
        self.session.start_received()
        final: Signed[Receipt] | None = None
        try:
            async with trio.open_nursery() as outer:
                self.outer = outer
                outer.start_soon(self.outbox.run)
                try:
                    final = await self._run(start, outer)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await self.outbox.drained()
                    outer.cancel_scope.cancel()
        finally:
            # Rule 3, whatever happened above (a bug, the stream's budget running out): the chain ends
            # with a final receipt, and the capacity goes back.
            if final is None or final.record.state != "final":
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    final = await self._closing_receipt()
            self.s.on_finished(self.active, final.record if final else None, self.final_cosigned.is_set())

    async def _closing_receipt(self) -> Signed[Receipt] | None:
        """A final receipt that claims nothing beyond what the buyer countersigned."""
        closing = self.session.closing(wall_ms())
        if not isinstance(closing, Store):
            return closing
        try:
            await self.s.store.append_receipt(closing.receipt)
        except SuanliError as exc:  # the next start closes it (close_open_agreements)
            log.warning("job %s: closing receipt not stored: %s", self.ag_hex, exc)
            return None
        self.session.closing_stored(closing.receipt)
        return closing.receipt

    async def _run(self, start: Start, outer: trio.Nursery) -> Signed[Receipt] | None:
        try:
            image_id, inputs = await self._prepare_unless_stopped(start)
            env = await self.s.engine.call(image_env, self.s.engine.client, image_id, what="inspect image")
            plan = self.plan(image_id, env)
        except (SuanliError, OSError) as exc:
            return await self._cannot_start(exc)
        self.status("starting")
        result, last, outputs = None, None, b""
        started = False
        try:
            async with open_job(self.s.engine, plan, inputs=inputs) as job:
                try:
                    await job.start()
                    started = True
                    self.status("running", f"container {job.id[:12]}")
                    last = await self._supervise(job, outer)
                except* SuanliError as group:  # Rule 3: an engine or store error still ends the chain
                    log.warning("job %s failed while running: %s", self.ag_hex, first_leaf(group))
                    self.active.request_stop(PROVIDER_FAULT)
                    await _stop_quietly(job)
                    last = job.meter.sample(job.now_ms())
                result = job.result
                if result is not None:
                    try:
                        outputs = await job.read_outputs(min(self.s.policy.output_max_bytes, MAX_WIRE_OUTPUT_BYTES))
                        if job.skipped_outputs:  # L4: named to the buyer; the rest are delivered
                            self.note(OUTPUTS_SKIPPED, "; ".join(
                                f"{name}: {why}" for name, why in job.skipped_outputs)[:2048])
                    except SuanliError as exc:
                        log.warning("job %s: outputs could not be read: %s", self.ag_hex, exc)
        except SuanliError as exc:
            if not started:  # the job's disk, volume or container could not be made: nothing ran
                return await self._cannot_start(exc)
            log.warning("job %s: the container could not be removed: %s", self.ag_hex, exc)
            if result is None:
                self.active.request_stop(PROVIDER_FAULT)
        return await self._finish(result, last, outputs)

    async def _cannot_start(self, exc: SuanliError | OSError) -> Signed[Receipt]:
        """The buyer hears why (``job.fail`` with the error's reason, e.g. ``disk_full``), and the empty
        chain is closed by a final receipt that claims nothing (settlement.chain: closing)."""
        log.warning("job %s cannot start: %s", self.ag_hex, exc)
        final: Signed[Receipt] | None = None
        for action in self.session.cannot_start(str(getattr(exc, "reason", None) or PROVIDER_FAULT), str(exc),
                                                wall_ms()):
            if isinstance(action, Send):
                self.outbox.control(action.message)
            elif isinstance(action, Store):
                final = await self.issue(action)
        return final  # type: ignore[return-value]

    async def _supervise(self, job, outer: trio.Nursery) -> MeterSample | None:  # type: ignore[no-untyped-def]
        logs_send, logs = trio.open_memory_channel(256)
        last: MeterSample | None = None

        def stop_soon() -> None:
            outer.start_soon(_stop_quietly, job)

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
            await _stop_quietly(job)

        logs_done = trio.Event()
        async with trio.open_nursery() as log_nursery:
            log_nursery.start_soon(pump_logs)
            log_nursery.start_soon(forward_logs)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_quietly, job)
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

    async def _tick(self, job, sample: MeterSample) -> None:  # type: ignore[no-untyped-def]
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

    async def _finish(self, result, last: MeterSample | None, outputs: bytes) -> Signed[Receipt]:  # type: ignore[no-untyped-def]
        """Final receipt, its countersignature, then the outputs (Rule 4), then ``done``."""
        final = await self.issue(self.session.finish(
            ran=result is not None, timed_out=bool(result and result.timed_out),
            exit_code=result.exit_code if result is not None else None,
            outputs_digest=hashlib.sha256(outputs).digest(), last=last, wall_ms=wall_ms()))
        if not self._reading:
            self.outer.start_soon(self.read_buyer, lambda: None)
        if self.session.awaits_final_countersignature and not self.outbox.broken.is_set():
            with trio.move_on_after((self.ag.terms.countersign_timeout_ms + self.ag.terms.grace_ms) / 1000):
                await self.final_cosigned.wait()
        sent = 0
        if outputs and self.session.may_deliver_outputs() and not self.outbox.broken.is_set():
            await self.outbox.drained()
            try:
                await send_blob(self.framed, "outputs", outputs)
                sent = len(outputs)
                self.session.transfer_done("outputs")
            except RemoteProtocolError as exc:
                log.info("job %s: outputs not delivered: %s", self.ag_hex, exc)
        elif outputs:
            log.info("job %s: outputs withheld: the final receipt was not countersigned", self.ag_hex)
        self.active.phase = "done"
        exit_code = result.exit_code if result is not None else None
        self.outbox.control(self.session.done(exit_code, bool(result and result.oom_killed),
                                              bool(result and result.timed_out), sent).message)
        return final


def first_leaf(group: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


async def _stop_quietly(job) -> None:  # type: ignore[no-untyped-def]
    try:
        await job.stop()
    except SuanliError as exc:
        log.info("stopping %s: %s", job.id[:12], exc)


async def _wait_quietly(job) -> None:  # type: ignore[no-untyped-def]
    try:
        await job.wait()
    except SuanliError as exc:
        log.warning("waiting for %s failed: %s", job.id[:12], exc)
        job.exited.set()


async def serve_job(services: JobServices, framed: FramedStream) -> None:
    """The ``/suanli/job/1.0.0`` handler (runs under serve_framed)."""
    with trio.fail_after(START_TIMEOUT_S):
        start = await expect(framed, (Start,))
    assert isinstance(start, Start)
    active = services.active.get(start.agreement_id)
    if active is None or active.agreement.record.buyer != public_from_peer_id(framed.peer):
        await framed.send_frame(Fail("unknown_agreement", "no confirmed agreement of yours with that id").encode())
        return
    if active.started:
        await framed.send_frame(Fail("already_started", "this agreement's job has already started").encode())
        return
    active.started = True
    try:
        await JobRun(services, active, framed).run(start)
    finally:
        active.finished.set()
