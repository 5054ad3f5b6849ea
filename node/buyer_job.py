"""The buyer's side of ``/suanli/job/1.0.0``: send the job's inputs, watch it, countersign what is right.

Rule 1: a receipt is countersigned only after ``ReceiptVerifier`` found nothing wrong with it (provider
signature, every chain rule, billed time against the buyer's own monotonic clock). A receipt that
breaks a rule is refused: the buyer cancels the job and reports why.
Rule 1a: the provider sends the outputs only once the final receipt is countersigned (node.provider_job
Rule 5); the final's output digest binds them, so outputs that do not match it, or that never come,
fail the job with the signed digest as the evidence.
Rule 2: a countersigned receipt is stored before the countersignature is sent (the buyer's own evidence).
Rule 3: cancelling (Ctrl-C) sends ``cancel`` and still waits, within a bound, for the final receipt.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from market.service import Deal
from node.jobwire import (
    CHUNK_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_ID,
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
from p2p.envelope import Signed, countersign, open_signed
from p2p.errors import CodecError, RemoteProtocolError, SignatureError, SuanliError
from p2p.framing import FramedStream
from p2p.host import Node
from p2p.identity import NodeKey, peer_id_from_public
from settlement.astore import AsyncStore
from settlement.chain import Finding
from settlement.records import FINAL, Receipt
from settlement.session import ReceiptVerifier

log = logging.getLogger("suanli.node.buyer")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Durations are measured on this clock: a wall clock stepping back must not refuse honest receipts."""
    return time.monotonic_ns() // 1_000_000


class JobFailed(SuanliError):
    """The job could not run, or the provider broke the rules, or vanished; ``reason`` says which."""


def pack_dir(path: Path | None) -> bytes:
    """A deterministic tar of a directory's regular files (empty bytes for no directory)."""
    if path is None:
        return b""
    if not path.is_dir():
        raise SuanliError(f"--input {path} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            data = file.read_bytes()
            info = tarfile.TarInfo(file.relative_to(path).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class JobOutcome:
    exit_code: int | None = None
    reason: str | None = None
    receipts: list[Signed[Receipt]] = field(default_factory=list)
    outputs: bytes = b""
    oom_killed: bool = False
    started_at_ms: int | None = None
    expected_outputs: bytes | None = None  # the countersigned final's output digest, until they arrive
    outputs_arrived: bool = False
    clock_note: str | None = None  # "your clock is N s ahead of the provider's", when receipts show it

    @property
    def last(self) -> Receipt | None:
        return self.receipts[-1].record if self.receipts else None


@dataclass
class BuyerHooks:
    on_log: Callable[[str, bytes], None] = lambda stream, data: None
    on_status: Callable[[str, str], None] = lambda phase, detail: None
    on_receipt: Callable[[Signed[Receipt]], None] = lambda receipt: None
    on_progress: Callable[[str, int, int], None] = lambda what, done, total: None


class _Sender:
    """The one writer of the buyer's job stream: a cancel never lands in the middle of another frame."""

    def __init__(self, framed: FramedStream) -> None:
        self.framed = framed
        self._lock = trio.Lock()

    async def send(self, payload: bytes) -> None:
        async with self._lock:
            await self.framed.send_frame(payload)

    async def blob(self, kind: str, data: bytes, progress: Callable[[str, int, int], None] | None = None) -> None:
        for offset in range(0, len(data), CHUNK_BYTES):
            await self.send(Chunk(kind, data[offset:offset + CHUNK_BYTES]).encode())
            if progress is not None:
                progress(kind, min(offset + CHUNK_BYTES, len(data)), len(data))
        await self.send(End(kind, len(data), hashlib.sha256(data).digest()).encode())


async def run_job(node: Node, key: NodeKey, store: AsyncStore, deal: Deal, inputs: bytes,
                  image_archive: bytes | None, hooks: BuyerHooks, cancel: trio.Event,
                  confirmed_at_ms: int, *, budget_s: float | None = None) -> JobOutcome:
    """Run the agreed job; JobFailed when it cannot run, the provider breaks a rule, vanishes, or
    stays silent past ``budget_s`` (default: the agreed duration plus uploads, timeouts and slack)."""
    ag = deal.agreement.record
    peer = peer_id_from_public(ag.provider)
    framed = FramedStream(await node.open_stream(peer, PROTOCOL_ID), max_frame_bytes=MAX_FRAME_BYTES)
    sender = _Sender(framed)
    outcome = JobOutcome()
    # Durations are on the monotonic clock (``confirmed_at_ms``, a wall-clock time, is not mixed in); the
    # start is moved to when the inputs are sent, below.
    verifier = ReceiptVerifier(deal.agreement, monotonic_ms())
    after_cancel_s = (ag.terms.countersign_timeout_ms + ag.terms.grace_ms) / 1000 + 30
    if budget_s is None:
        upload = len(inputs) + len(image_archive or b"")
        budget_s = ag.max_duration_ms / 1000 + upload / (1 << 20) + after_cancel_s + 120
    failure: SuanliError | None = None
    try:
        await sender.send(Start(deal.agreement.record_id, len(inputs),
                                len(image_archive) if image_archive else 0).encode())

        async with trio.open_nursery() as nursery:
            async def send_cancel() -> None:
                await cancel.wait()
                try:
                    await sender.send(Cancel("buyer_cancel").encode())
                except RemoteProtocolError:
                    pass
                await trio.sleep(after_cancel_s)  # Rule 3: the wait for the final receipt is bounded
                nursery.cancel_scope.cancel()

            nursery.start_soon(send_cancel)
            try:
                with trio.fail_after(budget_s):
                    await _follow(sender, key, store, verifier, outcome, hooks, image_archive, inputs, peer)
            except (JobFailed, RemoteProtocolError) as exc:  # raised here, not from the nursery: no group
                failure = exc
            except trio.TooSlowError:
                failure = JobFailed(f"provider {peer} went silent: no end of the job within {budget_s:.0f} s",
                                    reason="timeout")
            nursery.cancel_scope.cancel()
        if outcome.reason is None and failure is None:
            failure = JobFailed(f"provider {peer} did not end the job within {after_cancel_s:.0f} s of the cancel",
                                reason="timeout")
    finally:
        await framed.aclose()
    outcome.clock_note = verifier.clock_note()
    if isinstance(failure, JobFailed) and outcome.clock_note and getattr(failure, "reason", None) == "receipt_refused":
        failure = JobFailed(f"{failure} ({outcome.clock_note})", **failure.fields)
    if isinstance(failure, RemoteProtocolError):
        raise JobFailed(f"lost the provider {peer} mid-job: {failure}", reason="provider_lost") from failure
    if failure is not None:
        raise failure
    return outcome


async def _follow(sender: _Sender, key: NodeKey, store: AsyncStore, verifier: ReceiptVerifier,
                  outcome: JobOutcome, hooks: BuyerHooks, image_archive: bytes | None, inputs: bytes,
                  peer: str) -> None:
    """Handle the provider's messages until ``done``."""
    framed = sender.framed
    out_buf = bytearray()
    out_hash = hashlib.sha256()
    out_digest = hashlib.sha256().digest()  # of no outputs, until they arrive
    while True:
        payload = await framed.receive_frame()
        if payload is None:
            raise JobFailed(f"provider {peer} closed the job stream before the job ended", reason="provider_lost")
        msg = decode_message(payload)
        if isinstance(msg, Status):
            hooks.on_status(msg.phase, msg.detail)
            if msg.phase == "running":
                outcome.started_at_ms = msg.at_ms
            if msg.phase == "need_image":
                if image_archive is None:
                    raise JobFailed("the provider lacks the image and no --image-archive was given",
                                    reason="image_missing")
                await sender.blob("image", image_archive, hooks.on_progress)
            elif msg.phase == "need_inputs":
                await sender.blob("inputs", inputs)
                # The container cannot start before the inputs are in: billed time is checked against
                # our own clock from here, so upload time can never be billed.
                verifier.started_at_ms = monotonic_ms()
        elif isinstance(msg, Log):
            hooks.on_log(msg.stream, msg.data)
        elif isinstance(msg, Chunk) and msg.kind == "outputs":
            out_buf += msg.data
            out_hash.update(msg.data)
            if len(out_buf) > 1 << 30:
                raise JobFailed("outputs exceed 1 GiB", reason="outputs_too_large")
        elif isinstance(msg, End) and msg.kind == "outputs":
            out_digest = out_hash.digest()
            if msg.sha256 != out_digest or msg.total_bytes != len(out_buf):
                raise JobFailed("the outputs do not match their digest", reason="outputs_corrupt")
            if outcome.expected_outputs is not None and out_digest != outcome.expected_outputs:
                raise JobFailed("the outputs are not the ones the final receipt names (its output digest); "
                                "the countersigned final receipt is the evidence", reason="outputs_corrupt")
            outcome.outputs = bytes(out_buf)
            outcome.outputs_arrived = True
        elif isinstance(msg, ReceiptMsg):
            await _countersign(sender, key, store, verifier, msg.receipt, outcome, hooks, out_digest)
        elif isinstance(msg, Done):
            outcome.exit_code = msg.exit_code
            outcome.reason = msg.reason
            outcome.oom_killed = msg.oom_killed
            if (outcome.expected_outputs is not None and not outcome.outputs_arrived
                    and outcome.expected_outputs != hashlib.sha256(b"").digest()):
                raise JobFailed("the provider ended the job without the outputs its countersigned final receipt "
                                "names; that receipt is the evidence", reason="outputs_missing")
            return
        elif isinstance(msg, Fail):
            raise JobFailed(f"the provider could not run the job: {msg.reason}: {msg.detail}",
                            reason=msg.reason)


async def _countersign(sender: _Sender, key: NodeKey, store: AsyncStore, verifier: ReceiptVerifier,
                       data: bytes, outcome: JobOutcome, hooks: BuyerHooks, outputs_digest: bytes) -> None:
    try:
        signed = open_signed(data, Receipt)
    except (CodecError, SignatureError) as exc:
        raise JobFailed(f"the provider sent a receipt that does not verify: {exc}", reason="bad_receipt") from exc
    findings = verifier.check(signed, monotonic_ms(), wall_ms())
    r = signed.record
    if r.state == FINAL and r.output_digest is not None:
        if outcome.outputs_arrived and r.output_digest != outputs_digest:  # a provider that sent them first
            findings.append(Finding("output_digest", "the final receipt's output digest is not what arrived",
                                    r.seq))
        elif not outcome.outputs_arrived:
            outcome.expected_outputs = r.output_digest  # Rule 1a: checked when they arrive
    if findings:
        detail = "; ".join(f.describe() for f in findings)
        try:
            await sender.send(Cancel("receipt_refused").encode())
        except RemoteProtocolError:
            pass
        raise JobFailed(f"refusing receipt {r.seq}: {detail}", reason="receipt_refused", findings=findings)
    cosigned = countersign(signed, key)
    await store.append_receipt(cosigned)  # Rule 2
    verifier.accept(signed)
    outcome.receipts.append(cosigned)
    try:
        await sender.send(Countersign(cosigned.to_bytes()).encode())
    except RemoteProtocolError as exc:
        # Stored already (Rule 2): read on, since what the provider sent before it went (a final
        # receipt, ``done``) may still be waiting; a stream that is gone ends the job when read.
        log.info("countersignature of receipt %d not delivered: %s", r.seq, exc)
    hooks.on_receipt(cosigned)
