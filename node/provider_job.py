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
from collections.abc import Callable

import trio

from node.jobcontainer import ContainerSide, monotonic_ms, stop_quietly, wall_ms
from node.jobservices import ActiveJob, JobServices  # noqa: F401  (re-exported: node.provider)
from node.jobsession import Send, Stop, Store
from node.jobsession_provider import ProviderSession
from node.jobupload import (  # noqa: F401  (re-exported: node.provider, tests)
    IMAGE_DISK_BUDGET_BYTES,
    IMAGE_UPLOADS,
    UPLOAD_ALLOWANCE_S,
    UPLOAD_WINDOW_S,
    ImageSources,
    expect,
    prepare,
    send_blob,
    unless_stopped,
)
from node.outbox import Outbox
from node.owner_job import OwnerSide
from p2p.envelope import Signed, open_countersigned
from p2p.errors import CodecError, RemoteProtocolError, SuanliError, first_leaf
from p2p.framing import FramedStream
from p2p.identity import public_from_peer_id
from p2p.job_wire import Countersign, Fail, Start, decode_message
from p2p.receipt_records import PROVIDER_FAULT, Receipt
from sandbox.cgroups import find_cgroup
from sandbox.metering import MeterSample
from sandbox.runner import open_job

log = logging.getLogger("suanli.node.job")

MAX_WIRE_OUTPUT_BYTES = 256 << 20
OUTPUTS_SKIPPED = "outputs_skipped"  # a Status phase: the /io/out entries not handed back, and why
START_TIMEOUT_S = 30.0  # a job stream must name its agreement within this


class JobRun(ContainerSide, OwnerSide):
    """One job on one stream (see the module docstring); its container side is node.jobcontainer's,
    the owner's events node.owner_job's."""

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
        active.on_owner = self.owner_event
        self._job = None  # the container's runner job, once it runs
        self._owner_send, self._owner_events = trio.open_memory_channel[str](64)
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

    def _image_sources(self) -> ImageSources:
        """node.jobupload Rule 6: the provider's puller and layer store, and this session's messages."""
        images = self.s.images

        def claim(image_id: str) -> None:  # in use before any room is made for it (node.jobimages Rule 4)
            self.active.image_id = image_id

        def have_layers(layers: tuple[bytes, ...]) -> None:
            self.outbox.control(self.session.have_layers(layers).message)

        async def pull() -> str:
            assert images is not None
            return await images.pull(self.ag, self.status, claim)

        return ImageSources(pull=pull if images is not None else None,
                            store=images.layers if images is not None else None,
                            have_layers=have_layers, received=self.session.transfer_done)

    async def _prepare_unless_stopped(self, start: Start) -> tuple[str, dict[str, bytes]]:
        async def work() -> tuple[str, dict[str, bytes]]:
            prepared = await prepare(self.s.engine, self.s.image_dir, self.framed, self.ag.job, start, self.status,
                                     self.outbox.drained, allowance_s=UPLOAD_ALLOWANCE_S, window_s=UPLOAD_WINDOW_S,
                                     sources=self._image_sources())
            self.active.image_id = prepared[0]
            self.session.transfer_done("inputs")
            return prepared

        return await unless_stopped(work, self.active.stop_requested, lambda: self.active.stop_reason, self.framed.peer)

    async def run(self, start: Start) -> None:
        self.session.start_received()
        final: Signed[Receipt] | None = None
        try:
            async with trio.open_nursery() as outer:
                self.outer = outer
                outer.start_soon(self.outbox.run)
                outer.start_soon(self._serve_owner_events)
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
            plan = await self.plan(image_id)
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
                    self._job = job
                    if job.pid is not None:
                        cg = await trio.to_thread.run_sync(find_cgroup, job.pid)
                        self.active.cpu_usage_file = cg.files.get("cpu") if cg is not None else None
                    self.status("running", f"container {job.id[:12]}")
                    last = await self._supervise(job, outer)
                except* SuanliError as group:  # Rule 3: an engine or store error still ends the chain
                    log.warning("job %s failed while running: %s", self.ag_hex, first_leaf(group))
                    self.active.request_stop(PROVIDER_FAULT)
                    await stop_quietly(job)
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
