"""The buyer's side of ``/suanli/job/1.0.0`` (a trio shell): send the job's inputs, watch it, countersign
what is right.

The rules live in the pure session (node.jobsession_buyer: the table, what is countersigned, what the
outputs must be); this shell performs its actions against the stream and the store, with the clocks.
Rule 1: a countersigned receipt is stored before the countersignature is sent (the buyer's own evidence).
Rule 2: cancelling (Ctrl-C) sends ``cancel`` and still waits, within a bound, for the final receipt.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from market.service import Deal
from node.jobsession import Abort, Finish, Send, Store, Upload
from node.jobsession_buyer import BuyerSession, JobFailed, JobOutcome  # noqa: F401  (JobOutcome: re-exported)
from p2p.clock import monotonic_ms, wall_ms  # module globals: tests set buyer_job.wall_ms
from p2p.envelope import Signed
from p2p.errors import RemoteProtocolError, SuanliError
from p2p.framing import FramedStream
from p2p.host import Node
from p2p.identity import NodeKey, peer_id_from_public
from p2p.job_wire import (
    CHUNK_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_ID,
    Chunk,
    End,
    Log,
    Status,
    decode_message,
    start_layers,
)
from p2p.receipt_records import Receipt
from settlement.astore import AsyncStore

log = logging.getLogger("suanli.node.buyer")


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

    async def send_quietly(self, action: Send) -> None:
        """A ``cancel``: the stream may be gone already, and the job ends either way."""
        try:
            await self.send(action.message.encode())
        except RemoteProtocolError:
            pass


async def run_job(node: Node, key: NodeKey, store: AsyncStore, deal: Deal, inputs: bytes,
                  image_archive: bytes | None, hooks: BuyerHooks, cancel: trio.Event,
                  confirmed_at_ms: int, *, budget_s: float | None = None,
                  image_layers: tuple[bytes, ...] = ()) -> JobOutcome:
    """Run the agreed job; JobFailed when it cannot run, the provider breaks a rule, vanishes, or
    stays silent past ``budget_s`` (default: the agreed duration plus uploads, timeouts and slack)."""
    ag = deal.agreement.record
    peer = peer_id_from_public(ag.provider)
    framed = FramedStream(await node.open_stream(peer, PROTOCOL_ID), max_frame_bytes=MAX_FRAME_BYTES)
    sender = _Sender(framed)
    # Durations are on the monotonic clock (``confirmed_at_ms``, a wall-clock time, is not mixed in); the
    # start is moved to when the inputs are sent.
    session = BuyerSession(deal.agreement, key, monotonic_ms(), has_image=image_archive is not None,
                           image_layers=image_layers if image_archive is not None else ())
    after_cancel_s = (ag.terms.countersign_timeout_ms + ag.terms.grace_ms) / 1000 + 30
    if budget_s is None:
        upload = len(inputs) + len(image_archive or b"")
        budget_s = ag.max_duration_ms / 1000 + upload / (1 << 20) + after_cancel_s + 120
    failure: SuanliError | None = None
    try:
        await sender.send(session.start(len(inputs), len(image_archive) if image_archive else 0).message.encode())

        async with trio.open_nursery() as nursery:
            async def send_cancel() -> None:
                await cancel.wait()
                for action in session.cancel():
                    if isinstance(action, Send):
                        await sender.send_quietly(action)
                await trio.sleep(after_cancel_s)  # Rule 2: the wait for the final receipt is bounded
                nursery.cancel_scope.cancel()

            nursery.start_soon(send_cancel)
            try:
                with trio.fail_after(budget_s):
                    await _follow(sender, store, session, hooks, image_archive, inputs, peer)
            except (JobFailed, RemoteProtocolError) as exc:  # raised here, not from the nursery: no group
                failure = exc
            except trio.TooSlowError:
                failure = JobFailed(f"provider {peer} went silent: no end of the job within {budget_s:.0f} s",
                                    reason="timeout")
            nursery.cancel_scope.cancel()
        if session.outcome.reason is None and failure is None:
            failure = JobFailed(f"provider {peer} did not end the job within {after_cancel_s:.0f} s of the cancel",
                                reason="timeout")
    finally:
        await framed.aclose()
    outcome = session.outcome
    outcome.clock_note = session.clock_note()
    if isinstance(failure, JobFailed) and outcome.clock_note and getattr(failure, "reason", None) == "receipt_refused":
        failure = JobFailed(f"{failure} ({outcome.clock_note})", **failure.fields)
    if isinstance(failure, RemoteProtocolError):
        raise JobFailed(f"lost the provider {peer} mid-job: {failure}", reason="provider_lost") from failure
    if failure is not None:
        raise failure
    return outcome


async def _follow(sender: _Sender, store: AsyncStore, session: BuyerSession, hooks: BuyerHooks,
                  image_archive: bytes | None, inputs: bytes, peer: str) -> None:
    """Handle the provider's messages until ``done``: perform what the session makes of each."""
    while True:
        payload = await sender.framed.receive_frame()
        if payload is None:
            raise JobFailed(f"provider {peer} closed the job stream before the job ended", reason="provider_lost")
        msg = decode_message(payload)
        if isinstance(msg, Status):
            hooks.on_status(msg.phase, msg.detail)
        elif isinstance(msg, Log):
            hooks.on_log(msg.stream, msg.data)
        for action in session.message_received(msg, monotonic_ms(), wall_ms()):
            if isinstance(action, Upload):
                if action.kind == "image":
                    archive = image_archive or b""
                    if action.omit:  # p2p.job_wire Rule 3: the provider holds these layers
                        archive = await trio.to_thread.run_sync(archive_without, archive, action.omit)
                    await sender.blob("image", archive, hooks.on_progress)
                else:
                    await sender.blob("inputs", inputs)
                session.transfer_done(action.kind, monotonic_ms())
            elif isinstance(action, Store):
                await store.append_receipt(action.receipt)  # Rule 1
                try:
                    await sender.send(session.stored(action.receipt).message.encode())
                except RemoteProtocolError as exc:
                    # Stored already (Rule 1): read on, since what the provider sent before it went (a final
                    # receipt, ``done``) may still be waiting; a stream that is gone ends the job when read.
                    log.info("countersignature of receipt %d not delivered: %s", action.receipt.record.seq, exc)
                hooks.on_receipt(action.receipt)
            elif isinstance(action, Send):
                await sender.send_quietly(action)
            elif isinstance(action, Abort):
                raise action.error
            elif isinstance(action, Finish):
                return


def archive_layers(archive: bytes) -> tuple[bytes, ...]:
    """The layers of a ``docker save`` or OCI archive as ``job.start`` names them (p2p.job_wire
    ``start_layers``); () when the archive cannot be read (the provider's checks say why later)."""
    from sandbox.archive_layers import layer_diff_ids
    from sandbox.errors import ImageError

    try:
        return start_layers(layer_diff_ids(io.BytesIO(archive)))
    except ImageError:
        return ()


def archive_without(archive: bytes, omit: tuple[bytes, ...]) -> bytes:
    """The archive without the layers the provider holds (p2p.job_wire Rule 3): the clean copy of its one
    image, those layers' contents left out (sandbox.archive)."""
    from sandbox.archive import inspect_archive
    from sandbox.archive_layers import write_partial_archive

    src = io.BytesIO(archive)
    plan = inspect_archive(src)
    out = io.BytesIO()
    write_partial_archive(src, plan, frozenset(f"sha256:{d.hex()}" for d in omit), out)
    return out.getvalue()

