"""The provider's side of ``/suanli/job/1.0.0``: run one agreed job and bill it second by second.

    start -> image (asked for only if missing) -> inputs -> container -> receipts + logs -> final receipt
    -> its countersignature -> outputs -> done

Rule 1: nothing is acknowledged before it is durable: every receipt is stored (provider-signed) before
it is sent, and every countersignature is stored before the guard counts it.
Rule 2: a countersignature that does not decode, does not verify, or is not exactly the receipt we
issued is treated as missing, never as valid (it is logged); the exposure guard does the rest.
Rule 3: the job loop never blocks on the buyer: messages go through an Outbox.
Rule 4: whatever happens (buyer gone, cancel, shutdown, an engine error), the chain ends with a final
receipt whose reason says why, and the container and volume are removed (sandbox.runner).
Rule 5: outputs leave only after the buyer countersigned the final receipt, which covers the whole run
and whose output digest binds them; a buyer that never countersigns gets no outputs and owes the
unsigned claim (settlement.billing Rule 3). A job being stopped is never paused: its run time is metered
until the container exits, however it stops; a job paused for a silent buyer is killed where it is
frozen, never thawed for a graceful stop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

from market.capacity import Allocation
from market.records import Agreement, Proposal
from node.jobwire import (
    CHUNK_BYTES,
    Cancel,
    Chunk,
    Countersign,
    Done,
    End,
    Fail,
    Log,
    ReceiptMsg,
    Start,
    Status,
    decode_message,
)
from node.outbox import Outbox
from p2p.envelope import Signed, open_countersigned, open_signed, sign_record
from p2p.errors import CodecError, RemoteProtocolError, SignatureError, SuanliError
from p2p.framing import FramedStream
from p2p.identity import NodeKey, public_from_peer_id
from p2p.records import Record
from sandbox.disk import check_room
from sandbox.engine import Engine
from sandbox.image_gc import record_loaded, record_used
from sandbox.images import image_env, load_image_archive, local_image_id
from sandbox.jobio import LogRateLimit, read_tar_files
from sandbox.meter import open_sampler
from sandbox.metering import MeterSample
from sandbox.plan import plan_container
from sandbox.runner import open_job
from sandbox.spec import EngineFacts, GpuInfo, ProviderPolicy
from sandbox.spec import JobSpec as SandboxJob
from settlement.astore import AsyncStore
from settlement.billing import amount_due
from settlement.records import (
    BUYER_CANCEL,
    BUYER_UNRESPONSIVE,
    COMPLETED,
    DEADLINE,
    KILLED_EXTERNALLY,
    PROVIDER_FAULT,
    Receipt,
    Usage,
)
from settlement.session import PAUSE, RESUME, RUN, STOP, ExposureGuard, ReceiptIssuer, closing_receipt

log = logging.getLogger("suanli.node.job")

MAX_INPUT_BYTES = 256 << 20
MAX_IMAGE_BYTES = 2 << 30  # one upload; it lies on disk, never in memory (M2)
MAX_WIRE_OUTPUT_BYTES = 256 << 20
OUTPUTS_SKIPPED = "outputs_skipped"  # a Status phase: the /io/out entries not handed back, and why
LOGS_DROPPED = "logs_dropped"  # a Status phase: its detail says how many log bytes the rate limit dropped
LOG_TAIL_S = 5.0  # how long the last log lines may take to arrive after the job exits
START_TIMEOUT_S = 30.0  # a job stream must name its agreement within this
MAX_BAD_FRAMES = 64
UPLOAD_ALLOWANCE_S = 30.0
MIN_UPLOAD_BYTES_PER_S = 1 << 20  # 1 MiB/s on average over the whole upload, or it is cut off
# ... and in every window of UPLOAD_WINDOW_S, at least MIN_UPLOAD_WINDOW_BYTES (or all that is left):
# a stalled uploader is cut off within one window, whatever its total budget.
UPLOAD_WINDOW_S = 10.0
MIN_UPLOAD_WINDOW_BYTES = 1 << 20
IMAGE_DISK_BUDGET_BYTES = 8 << 30  # image uploads in flight, each counted twice (upload + clean copy)
_WRITE_BATCH_BYTES = 1 << 20


class UploadBudget:
    """Disk that image uploads in flight may take. An upload that does not fit is refused at once,
    never queued: no uploader waits on another (M2)."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes, self.used_bytes = total_bytes, 0

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if self.used_bytes + nbytes > self.total_bytes:
            raise SuanliError("the provider is receiving too many images at once; try again later",
                              reason="busy", limit=self.total_bytes)
        self.used_bytes += nbytes
        try:
            yield
        finally:
            self.used_bytes -= nbytes


IMAGE_UPLOADS = UploadBudget(IMAGE_DISK_BUDGET_BYTES)


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

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
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


def usage_of(sample: MeterSample) -> Usage:
    return Usage(cpu_core_ms=sample.cpu_core_ms, mem_peak_bytes=sample.mem_peak_bytes, gpu_ms=0,
                 gpu_mem_peak_bytes=sample.gpu_mem_peak_bytes, gpu_sm_pct_ms=sample.gpu_sm_pct_ms,
                 energy_mj=sample.energy_mj)


def read_input_tar(data: bytes, max_files: int = 10_000) -> dict[str, bytes]:
    """Regular files of the buyer's input tar, by safe relative path; anything else is the buyer's fault."""
    if not data:
        return {}
    try:
        return read_tar_files(data, what="the inputs", max_files=max_files)
    except SuanliError as exc:
        raise RemoteProtocolError(exc.message) from exc


async def _expect(framed: FramedStream, kinds: tuple[type[Record], ...]) -> Record:
    payload = await framed.receive_frame()
    if payload is None:
        raise RemoteProtocolError("the buyer closed the job stream", peer=framed.peer)
    msg = decode_message(payload)
    if not isinstance(msg, kinds):
        raise RemoteProtocolError(f"unexpected {type(msg).__name__} in the job stream", peer=framed.peer)
    return msg


def upload_budget_s(declared: int) -> float:
    """How long an upload of ``declared`` bytes may take: a fixed allowance plus a minimum rate."""
    return UPLOAD_ALLOWANCE_S + declared / MIN_UPLOAD_BYTES_PER_S


async def receive_blob(framed: FramedStream, kind: str, declared: int, limit: int) -> bytearray:
    """Chunks of ``kind`` up to the End, exactly ``declared`` bytes with the stated sha256 (Rule 2 of jobwire),
    in memory: for the inputs, which are small (``MAX_INPUT_BYTES``).

    Bounded in size (``limit``) and in time (``upload_budget_s``, and a minimum per window): a buyer that
    stalls holds nothing.
    """
    if declared > limit:
        raise RemoteProtocolError(f"{kind} of {declared} bytes exceed the limit of {limit}", limit=limit)
    buf = bytearray()

    async def keep(data: bytes) -> None:
        buf.extend(data)

    with trio.fail_after(upload_budget_s(declared)):
        await _receive_blob(framed, kind, declared, keep)
    return buf


async def receive_blob_to_file(framed: FramedStream, kind: str, declared: int, limit: int, f: IO[bytes]) -> str:
    """As ``receive_blob``, but written to ``f`` as it arrives (memory: one batch); return "sha256:<hex>"."""
    if declared > limit:
        raise RemoteProtocolError(f"{kind} of {declared} bytes exceed the limit of {limit}", limit=limit)
    batch = bytearray()

    async def flush() -> None:
        data = bytes(batch)
        batch.clear()
        await trio.to_thread.run_sync(f.write, data)

    async def write(data: bytes) -> None:
        batch.extend(data)
        if len(batch) >= _WRITE_BATCH_BYTES:
            await flush()

    with trio.fail_after(upload_budget_s(declared)):
        digest = await _receive_blob(framed, kind, declared, write)
    await flush()
    await trio.to_thread.run_sync(f.flush)
    return "sha256:" + digest.hex()


async def _receive_blob(framed: FramedStream, kind: str, declared: int,
                        sink: Callable[[bytes], Awaitable[None]]) -> bytes:
    digest = hashlib.sha256()
    total = window_start_total = 0
    window_end = trio.current_time() + UPLOAD_WINDOW_S
    while True:
        msg: Record | None = None
        with trio.move_on_at(window_end):
            msg = await _expect(framed, (Chunk, End))
        if msg is None:
            raise RemoteProtocolError(f"the {kind} upload stalled: less than {MIN_UPLOAD_WINDOW_BYTES} bytes "
                                      f"in {UPLOAD_WINDOW_S:g} s", peer=framed.peer, reason="upload_stalled")
        if msg.kind != kind:  # type: ignore[attr-defined]
            raise RemoteProtocolError(f"expected {kind} data, got {msg.kind}")  # type: ignore[attr-defined]
        if isinstance(msg, End):
            if msg.total_bytes != total or msg.sha256 != digest.digest():
                raise RemoteProtocolError(f"{kind} do not match their declared size or sha256")
            return digest.digest()
        if not isinstance(msg, Chunk):
            raise RemoteProtocolError(f"unexpected {type(msg).__name__} in the {kind} upload")
        total += len(msg.data)
        if total > declared:
            raise RemoteProtocolError(f"more {kind} than the {declared} bytes declared")
        digest.update(msg.data)
        await sink(msg.data)
        if total - window_start_total >= min(MIN_UPLOAD_WINDOW_BYTES, declared - window_start_total):
            window_start_total, window_end = total, trio.current_time() + UPLOAD_WINDOW_S


async def send_blob(framed: FramedStream, kind: str, data: bytes) -> None:
    for offset in range(0, len(data), CHUNK_BYTES):
        await framed.send_frame(Chunk(kind, data[offset:offset + CHUNK_BYTES]).encode())
    await framed.send_frame(End(kind, len(data), hashlib.sha256(data).digest()).encode())


class JobRun:
    """One job on one stream (see the module docstring)."""

    def __init__(self, services: JobServices, active: ActiveJob, framed: FramedStream) -> None:
        self.s = services
        self.active = active
        self.framed = framed
        self.outbox = Outbox(framed)
        ag = active.agreement.record
        self.ag = ag
        self.issuer = ReceiptIssuer(active.agreement)
        self.guard = ExposureGuard.for_agreement(ag)
        self.issued: dict[int, Signed[Receipt]] = {}
        self._issued_by_body: dict[bytes, Signed[Receipt]] = {}  # the same receipts, by their body bytes
        self.final_cosigned = trio.Event()
        self.final_seq: int | None = None
        self.garbage_frames = 0
        self._reading = False
        self.outer: trio.Nursery

    def status(self, phase: str, detail: str = "") -> None:
        self.active.phase = phase
        self.outbox.control(Status(phase, wall_ms(), detail))

    async def issue(self, metered_ms: int, usage: Usage, final: tuple[str, int | None, bytes | None] | None = None,
                    max_metered_ms: int | None = None) -> Signed[Receipt]:
        r = self.issuer.next(metered_ms, usage, wall_ms(), final=final, max_metered_ms=max_metered_ms)
        signed = sign_record(r, self.s.key)
        await self.s.store.append_receipt(signed)  # Rule 1: durable before it is sent
        self.issuer.issued(r, signed.body)
        self.issued[r.seq] = signed
        self._issued_by_body[signed.body] = signed
        self.guard.sent(r.seq, r.amount_micros, monotonic_ms())
        self.active.metered_ms, self.active.amount_micros = r.metered_ms, r.amount_micros
        self.outbox.control(ReceiptMsg(signed.to_bytes()))
        return signed

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
                msg = decode_message(payload)
            except CodecError as exc:
                try:
                    self._bad_frame(f"undecodable frame from the buyer (treated as missing): {exc}")
                except RemoteProtocolError:
                    return  # stop listening; the exposure guard treats the buyer as silent
                continue
            if isinstance(msg, Countersign):
                try:
                    await self.take_countersignature(msg.receipt)
                except RemoteProtocolError:
                    return
            elif isinstance(msg, Cancel):
                log.info("job %s: the buyer cancelled (%s)", self.ag_hex, msg.reason)
                self.active.request_stop(BUYER_CANCEL)
                job_stop()
            else:
                log.info("job %s: ignoring %s from the buyer", self.ag_hex, type(msg).__name__)

    async def take_countersignature(self, data: bytes) -> None:
        cosigned = self._countersigned_as_issued(data)
        if cosigned is None:  # not exactly one of ours plus a valid buyer signature: the full check says why
            try:
                cosigned = open_signed(data, Receipt, min_sigs=2)
            except (CodecError, SignatureError) as exc:
                self._bad_frame(f"a countersignature that does not verify (treated as missing): {exc}")
                return
        seq = cosigned.record.seq
        mine = self.issued.get(seq)
        if mine is None or cosigned.body != mine.body or cosigned.sigs[0] != mine.sigs[0]:
            self._bad_frame("a countersignature for a receipt we did not issue (treated as missing)")
            return
        if seq <= self.guard.cosigned_seq and seq != self.final_seq:
            return  # already counted
        # Stored, then counted, as one step that a cancellation cannot split (Rule 1).
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await self.s.store.append_receipt(cosigned)
            self.guard.countersigned(seq, cosigned.record.amount_micros, cosigned.record.metered_ms)
            self.active.cosigned_micros = self.guard.cosigned_amount
            if seq == self.final_seq:
                self.final_cosigned.set()

    def _countersigned_as_issued(self, data: bytes) -> Signed[Receipt] | None:
        """The common case, checked in full but cheaply (p2p.envelope.open_countersigned): one of our
        receipts with the buyer's valid signature added. None for anything else."""
        return open_countersigned(data, self._issued_by_body)

    def _bad_frame(self, what: str) -> None:
        self.garbage_frames += 1
        if self.garbage_frames <= 8:  # enough to diagnose; a flood is cut off below
            log.warning("job %s: %s", self.ag_hex, what)
        if self.garbage_frames > MAX_BAD_FRAMES:
            raise RemoteProtocolError("too many bad frames from the buyer", peer=self.framed.peer)

    @property
    def ag_hex(self) -> str:
        return self.active.agreement.record_id.hex()[:12]

    async def prepare(self, start: Start) -> tuple[str, dict[str, bytes]]:
        """The pinned image (loading the buyer's archive if we lack it) and the inputs."""
        job = self.ag.job
        client = self.s.engine.client
        image_id = await self.s.engine.call(local_image_id, client, frozenset({job.image}), what="find image")
        if image_id is None:
            if not start.image_archive_bytes or job.image_archive_sha256 is None:
                raise SuanliError(f"image {job.image} is not on this provider and no archive was offered",
                                  reason="image_missing")
            image_id = await self._receive_image(start.image_archive_bytes, job.image,
                                                 "sha256:" + job.image_archive_sha256.hex())
        elif self.s.image_dir is not None:
            await self.s.engine.call(record_used, self.s.image_dir, image_id, wall_ms(), what="note image use")
        self.status("need_inputs")
        await self.outbox.drained()
        inputs = await receive_blob(self.framed, "inputs", start.input_bytes, MAX_INPUT_BYTES)
        if job.input_sha256 is not None and hashlib.sha256(inputs).digest() != job.input_sha256:
            raise RemoteProtocolError("the inputs are not the ones agreed (sha256)", peer=self.framed.peer)
        files = await trio.to_thread.run_sync(read_input_tar, bytes(inputs))
        return image_id, files

    async def _receive_image(self, declared: int, image: str, archive_sha256: str) -> str:
        """The buyer's archive, streamed to a file on disk, checked, loaded and entered in the ledger of
        buyer images (sandbox.image_gc). Uploads run side by side (no lock); their disk is budgeted."""
        if declared > MAX_IMAGE_BYTES:
            raise RemoteProtocolError(f"an image of {declared} bytes exceeds the limit of {MAX_IMAGE_BYTES}",
                                      limit=MAX_IMAGE_BYTES)
        image_dir = self.s.image_dir
        if image_dir is not None:
            image_dir.mkdir(parents=True, exist_ok=True)
        # H4: an upload must leave the provider's disk reserve free (sandbox.plan Rule 3); uploads in flight
        # count in full. Measured in a thread; refused with `disk_full` before a byte is received.
        await trio.to_thread.run_sync(lambda: check_room(image_dir or tempfile.gettempdir(),
                                                         2 * declared + IMAGE_UPLOADS.used_bytes,
                                                         what=f"the image upload of {declared} bytes"))
        with IMAGE_UPLOADS.reserve(2 * declared), \
                tempfile.TemporaryFile(dir=image_dir, prefix="suanli-upload-") as f:
            self.status("need_image", f"send the archive of {image}")
            await self.outbox.drained()
            sha = await receive_blob_to_file(self.framed, "image", declared, MAX_IMAGE_BYTES, f)
            self.status("loading_image")
            # own_thread: a long load holds none of the engine's shared worker tokens.
            image_id = await self.s.engine.call(load_image_archive, self.s.engine.client, f,
                                                archive_sha256=archive_sha256, image_id=image, known_sha256=sha,
                                                work_dir=image_dir, what="load image", own_thread=True)
        if image_dir is not None:
            await self.s.engine.call(record_loaded, image_dir, self.s.engine.client, image_id, wall_ms(),
                                     what="note a loaded image")
        return image_id

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
            # Rule 4, whatever happened above (a bug, the stream's budget running out): the chain ends
            # with a final receipt, and the capacity goes back.
            if final is None or final.record.state != "final":
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    final = await self._closing_receipt()
            self.s.on_finished(self.active, final.record if final else None, self.final_cosigned.is_set())

    async def _closing_receipt(self) -> Signed[Receipt] | None:
        """A final receipt that claims nothing beyond what the buyer countersigned."""
        last = self.issuer.last
        if last is not None and last.state == "final":
            return self.issued.get(last.seq)
        cosigned = self.issued.get(self.guard.cosigned_seq)
        record = closing_receipt(self.active.agreement, last, self.issuer.last_id,
                                 cosigned.record if cosigned is not None else None,
                                 self.active.stop_reason or PROVIDER_FAULT, wall_ms())
        signed = sign_record(record, self.s.key)
        try:
            await self.s.store.append_receipt(signed)
        except SuanliError as exc:  # the next start closes it (close_open_agreements)
            log.warning("job %s: closing receipt not stored: %s", self.ag_hex, exc)
            return None
        self.issuer.issued(record, signed.body)
        return signed

    async def _prepare_unless_stopped(self, start: Start) -> tuple[str, dict[str, bytes]]:
        """``prepare``, abandoned when the daemon asks every job to stop (graceful shutdown)."""
        result: list[tuple[str, dict[str, bytes]]] = []
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                async def work() -> None:
                    result.append(await self.prepare(start))
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
                except* SuanliError as group:  # Rule 4: an engine or store error still ends the chain
                    log.warning("job %s failed while running: %s", self.ag_hex, first_leaf(group))
                    self.active.request_stop(PROVIDER_FAULT)
                    await _stop_quietly(job)
                    last = job.meter.sample(job.now_ms())
                result = job.result
                if result is not None:
                    try:
                        outputs = await job.read_outputs(min(self.s.policy.output_max_bytes, MAX_WIRE_OUTPUT_BYTES))
                        if job.skipped_outputs:  # L4: named to the buyer; the rest are delivered
                            self.outbox.control(Status(OUTPUTS_SKIPPED, wall_ms(), "; ".join(
                                f"{name}: {why}" for name, why in job.skipped_outputs)[:2048]))
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
        reason = getattr(exc, "reason", None) or PROVIDER_FAULT
        log.warning("job %s cannot start: %s", self.ag_hex, exc)
        self.outbox.control(Fail(str(reason)[:256], str(exc)[:2048]))
        return await self.issue(0, Usage(0, 0, 0, 0, 0, 0), final=(PROVIDER_FAULT, None, None))

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
                self.outbox.log_line(Log(line.stream, line.text.encode("utf-8", "replace")[:CHUNK_BYTES]))
            logs_done.set()
            if (note := limit.note()) is not None:
                self.outbox.control(Status(LOGS_DROPPED, wall_ms(), note))

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
        if job.result is not None and job.result.killed_externally:  # M6: never reported as completed
            self.active.request_stop(KILLED_EXTERNALLY)
        # Keep reading the buyer: the final countersignature comes later.
        self._reading = True
        outer.start_soon(self.read_buyer, lambda: None)
        return job.result.final if job.result is not None else last

    async def _tick(self, job, sample: MeterSample) -> None:  # type: ignore[no-untyped-def]
        action = self.guard.decide(monotonic_ms(), amount_due(sample.wall_ms, self.ag.price_micros_per_s))
        # A job being stopped is never paused: a frozen container would sit out the stop grace unmetered,
        # and its real run time is billed until it exits (the final receipt's claim, billing Rule 3).
        stopping = self.active.stop_requested.is_set()
        try:
            if action == PAUSE and self.active.phase != "paused" and not job.exited.is_set() and not stopping:
                log.info("job %s: countersignature late; pausing", self.ag_hex)
                await job.pause()
                self.status("paused", "waiting for your countersignature")
            elif action == RESUME and not job.exited.is_set():
                await job.resume()
                self.status("resumed")
        except SuanliError as exc:  # the container exited between the check and the call
            log.info("job %s: %s", self.ag_hex, exc)
        # A job being stopped is not paused, so a job that ignores SIGTERM runs on through the stop grace
        # (10 s by default) while the final receipt may claim only up to the unsigned ceiling (billing
        # Rule 3). When its buyer has fallen behind (the guard would pause it), it is killed at the last
        # tick before it would run past that ceiling (half an interval of margin: ticks jitter).
        interval = self.ag.terms.interval_ms
        past_ceiling = (stopping and action == PAUSE
                        and sample.wall_ms + interval + interval // 2 > self.guard.unsigned_ceiling_ms())
        if (action == STOP or past_ceiling) and not job.exited.is_set() and not job.killed:
            # Killed at once, where it is (a paused job is never thawed for a graceful stop: Rule 5). The
            # reason is set before the kill, and the kill goes through the runner, which marks it as its
            # own: the exit it causes is never taken for someone else's (killed_externally).
            if action == STOP:
                log.warning("job %s: buyer unresponsive past the grace; killing it", self.ag_hex)
                self.active.request_stop(BUYER_UNRESPONSIVE)
            else:
                log.warning("job %s: still running past what is countersigned, while stopping; killing it",
                            self.ag_hex)
            try:
                await job.kill()
            except SuanliError as exc:  # it exited between the check and the call
                log.info("job %s: %s", self.ag_hex, exc)
        billed = self.issuer.last.metered_ms if self.issuer.last else 0
        # The meter's first sample comes as the container starts: no receipt for a few milliseconds.
        worth_a_receipt = self.issuer.last is not None or sample.wall_ms * 2 >= self.ag.terms.interval_ms
        if action in (RUN, RESUME) and sample.wall_ms > billed and worth_a_receipt:
            await self.issue(sample.wall_ms, usage_of(sample))

    async def _finish(self, result, last: MeterSample | None, outputs: bytes) -> Signed[Receipt]:  # type: ignore[no-untyped-def]
        """Final receipt, its countersignature, then the outputs (Rule 5), then ``done``."""
        reason = self.active.stop_reason or (DEADLINE if result is not None and result.timed_out else COMPLETED)
        if result is None and self.active.stop_reason is None:
            reason = PROVIDER_FAULT
        # An unresponsive buyer is not waited for, so it is offered no outputs: its final names none.
        offered = result is not None and reason != BUYER_UNRESPONSIVE
        digest = hashlib.sha256(outputs).digest() if offered else None
        metered = last.wall_ms if last is not None else 0
        usage = usage_of(last) if last is not None else Usage(0, 0, 0, 0, 0, 0)
        exit_code = result.exit_code if result is not None else None
        # Whatever the reason, the final claims no more than an unsigned claim may be owed (billing
        # Rule 3): until the buyer countersigns it, it is one.
        final = await self.issue(metered, usage, final=(reason, exit_code, digest),
                                 max_metered_ms=self.guard.unsigned_ceiling_ms())
        self.final_seq = final.record.seq
        if not self._reading:
            self.outer.start_soon(self.read_buyer, lambda: None)
        if reason != BUYER_UNRESPONSIVE and not self.outbox.broken.is_set():
            with trio.move_on_after((self.ag.terms.countersign_timeout_ms + self.ag.terms.grace_ms) / 1000):
                await self.final_cosigned.wait()
        sent = 0
        if outputs and offered and self.final_cosigned.is_set() and not self.outbox.broken.is_set():
            await self.outbox.drained()
            try:
                await send_blob(self.framed, "outputs", outputs)
                sent = len(outputs)
            except RemoteProtocolError as exc:
                log.info("job %s: outputs not delivered: %s", self.ag_hex, exc)
        elif outputs:
            log.info("job %s: outputs withheld: the final receipt was not countersigned", self.ag_hex)
        self.active.phase = "done"
        self.outbox.control(Done(exit_code if exit_code is not None else -1,
                                 bool(result and result.oom_killed), bool(result and result.timed_out), reason,
                                 sent))
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
        start = await _expect(framed, (Start,))
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
