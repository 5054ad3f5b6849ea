"""The provider's transfers of ``/suanli/job/1.0.0`` (a trio shell): the buyer's image and inputs in,
bounded in size and time, and the outputs out. node.provider_job calls ``prepare`` before the container.

Rule 1: an upload is exactly the bytes declared, with the stated sha256 (jobwire Rule 2), or it fails.
Rule 2: an upload is bounded in time: a fixed allowance plus a minimum average rate over the whole
upload, and a minimum in every window (a stalled uploader is cut off within one window).
Rule 3 (M2): an image lies on disk, never in memory; the disk that uploads in flight may take is
budgeted (``IMAGE_UPLOADS``), and an upload that does not fit is refused at once, never queued.
Rule 4 (H4): an upload must leave the provider's disk reserve free (sandbox.plan Rule 3), measured in a
worker thread and refused with ``disk_full`` before a byte is received.
Rule 5: the preparation is abandoned as soon as the daemon asks the job to stop (``unless_stopped``).
Rule 6 (issue 19): a registry image is pulled (node.jobimages), never uploaded. For an archive, a
provider with a layer store first says which of the archive's layers it holds (``have_layers``), and
the buyer sends the archive without them; it is rebuilt from what arrived and the store, and checked by
the agreed image id and every layer's diff id (the partial archive's sha256 cannot be the agreed one).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

import trio

from market.negotiation import is_registry_image
from node.jobcontainer import wall_ms
from p2p.errors import RemoteProtocolError, SuanliError, first_leaf
from p2p.framing import FramedStream
from p2p.job_wire import CHUNK_BYTES, Chunk, End, Start, decode_message
from p2p.market_records import JobSpec
from p2p.receipt_records import PROVIDER_FAULT
from p2p.records import Record
from sandbox.disk import check_room
from sandbox.engine import Engine
from sandbox.image_gc import record_loaded, record_used
from sandbox.images import load_image_archive, local_image_id
from sandbox.jobio import read_tar_files

if TYPE_CHECKING:
    from sandbox.layerstore import LayerStore

MAX_INPUT_BYTES = 256 << 20
MAX_IMAGE_BYTES = 2 << 30  # one upload; it lies on disk, never in memory (M2)
UPLOAD_ALLOWANCE_S = 30.0
MIN_UPLOAD_BYTES_PER_S = 1 << 20  # 1 MiB/s on average over the whole upload, or it is cut off
UPLOAD_WINDOW_S = 10.0
MIN_UPLOAD_WINDOW_BYTES = 1 << 20
IMAGE_DISK_BUDGET_BYTES = 8 << 30  # image uploads in flight, each counted twice (upload + clean copy)
_WRITE_BATCH_BYTES = 1 << 20


class UploadBudget:
    """Disk that image uploads in flight may take (Rule 3)."""

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


def read_input_tar(data: bytes, max_files: int = 10_000) -> dict[str, bytes]:
    """Regular files of the buyer's input tar, by safe relative path; anything else is the buyer's fault."""
    if not data:
        return {}
    try:
        return read_tar_files(data, what="the inputs", max_files=max_files)
    except SuanliError as exc:
        raise RemoteProtocolError(exc.message) from exc


async def expect(framed: FramedStream, kinds: tuple[type[Record], ...]) -> Record:
    payload = await framed.receive_frame()
    if payload is None:
        raise RemoteProtocolError("the buyer closed the job stream", peer=framed.peer)
    msg = decode_message(payload)
    if not isinstance(msg, kinds):
        raise RemoteProtocolError(f"unexpected {type(msg).__name__} in the job stream", peer=framed.peer)
    return msg


def upload_budget_s(declared: int, allowance_s: float = UPLOAD_ALLOWANCE_S) -> float:
    """How long an upload of ``declared`` bytes may take: a fixed allowance plus a minimum rate."""
    return allowance_s + declared / MIN_UPLOAD_BYTES_PER_S


async def receive_blob(framed: FramedStream, kind: str, declared: int, limit: int, *,
                       allowance_s: float = UPLOAD_ALLOWANCE_S, window_s: float = UPLOAD_WINDOW_S) -> bytearray:
    """Chunks of ``kind`` up to the End (Rules 1 and 2), in memory: for the inputs, which are small."""
    if declared > limit:
        raise RemoteProtocolError(f"{kind} of {declared} bytes exceed the limit of {limit}", limit=limit)
    buf = bytearray()

    async def keep(data: bytes) -> None:
        buf.extend(data)

    with trio.fail_after(upload_budget_s(declared, allowance_s)):
        await _receive_blob(framed, kind, declared, keep, window_s)
    return buf


async def receive_blob_to_file(framed: FramedStream, kind: str, declared: int, limit: int, f: IO[bytes], *,
                               allowance_s: float = UPLOAD_ALLOWANCE_S, window_s: float = UPLOAD_WINDOW_S) -> str:
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

    with trio.fail_after(upload_budget_s(declared, allowance_s)):
        digest = await _receive_blob(framed, kind, declared, write, window_s)
    await flush()
    await trio.to_thread.run_sync(f.flush)
    return "sha256:" + digest.hex()


async def _receive_blob(framed: FramedStream, kind: str, declared: int,
                        sink: Callable[[bytes], Awaitable[None]], window_s: float) -> bytes:
    digest = hashlib.sha256()
    total = window_start_total = 0
    window_end = trio.current_time() + window_s
    while True:
        msg: Record | None = None
        with trio.move_on_at(window_end):
            msg = await expect(framed, (Chunk, End))
        if msg is None:
            raise RemoteProtocolError(f"the {kind} upload stalled: less than {MIN_UPLOAD_WINDOW_BYTES} bytes "
                                      f"in {window_s:g} s", peer=framed.peer, reason="upload_stalled")
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
            window_start_total, window_end = total, trio.current_time() + window_s


async def send_blob(framed: FramedStream, kind: str, data: bytes) -> None:
    for offset in range(0, len(data), CHUNK_BYTES):
        await framed.send_frame(Chunk(kind, data[offset:offset + CHUNK_BYTES]).encode())
    await framed.send_frame(End(kind, len(data), hashlib.sha256(data).digest()).encode())


Status = Callable[[str, str], None]  # (phase, detail): a job.status to the buyer


@dataclass(frozen=True)
class ImageSources:
    """Where a job's image may come from besides the engine (Rule 6): ``pull`` for a registry image
    (node.jobimages), the layer ``store`` and ``have_layers`` (sends ``job.have_layers``) for archives,
    and ``received`` (the session's transfer_done) once an archive has arrived."""

    pull: Callable[[], Awaitable[str]] | None = None
    store: LayerStore | None = None
    have_layers: Callable[[tuple[bytes, ...]], None] | None = None
    received: Callable[[str], None] = lambda kind: None


async def prepare(engine: Engine, image_dir: Path | None, framed: FramedStream, job: JobSpec, start: Start,
                  status: Status, drained: Callable[[], Awaitable[None]], *, allowance_s: float = UPLOAD_ALLOWANCE_S,
                  window_s: float = UPLOAD_WINDOW_S, sources: ImageSources = ImageSources()
                  ) -> tuple[str, dict[str, bytes]]:
    """The pinned image (pulling it, or loading the buyer's archive if we lack it) and the inputs."""
    if is_registry_image(job.image):  # Rule 6
        if sources.pull is None:
            raise SuanliError(f"image {job.image}: this provider does not pull registry images", reason="image_missing")
        image_id: str | None = await sources.pull()
    else:
        image_id = await engine.call(local_image_id, engine.client, frozenset({job.image}), what="find image")
    if image_id is None:
        if not start.image_archive_bytes or job.image_archive_sha256 is None:
            raise SuanliError(f"image {job.image} is not on this provider and no archive was offered",
                              reason="image_missing")
        held: tuple[bytes, ...] = ()
        if sources.store is not None and sources.have_layers is not None and start.image_layers:
            store = sources.store
            names = [f"sha256:{d.hex()}" for d in start.image_layers]
            held = tuple(bytes.fromhex(n.removeprefix("sha256:"))
                         for n in await trio.to_thread.run_sync(store.held, names))
            if held:
                sources.have_layers(held)
        image_id = await _receive_image(engine, image_dir, framed, start.image_archive_bytes, job.image,
                                        "sha256:" + job.image_archive_sha256.hex(), status, drained,
                                        allowance_s, window_s, store=sources.store, partial=bool(held))
        sources.received("image")
    elif image_dir is not None and not is_registry_image(job.image):
        await engine.call(record_used, image_dir, image_id, wall_ms(), what="note image use")
    status("need_inputs", "")
    await drained()
    inputs = await receive_blob(framed, "inputs", start.input_bytes, MAX_INPUT_BYTES, allowance_s=allowance_s,
                                window_s=window_s)
    if job.input_sha256 is not None and hashlib.sha256(inputs).digest() != job.input_sha256:
        raise RemoteProtocolError("the inputs are not the ones agreed (sha256)", peer=framed.peer)
    files = await trio.to_thread.run_sync(read_input_tar, bytes(inputs))
    return image_id, files


async def _receive_image(engine: Engine, image_dir: Path | None, framed: FramedStream, declared: int, image: str,
                         archive_sha256: str, status: Status, drained: Callable[[], Awaitable[None]],
                         allowance_s: float, window_s: float, *, store: LayerStore | None = None,
                         partial: bool = False) -> str:
    """The buyer's archive, streamed to a file on disk, checked, loaded and entered in the ledger of
    buyer images (sandbox.image_gc). Uploads run side by side (no lock); their disk is budgeted."""
    if declared > MAX_IMAGE_BYTES:
        raise RemoteProtocolError(f"an image of {declared} bytes exceeds the limit of {MAX_IMAGE_BYTES}",
                                  limit=MAX_IMAGE_BYTES)
    if image_dir is not None:
        await trio.to_thread.run_sync(lambda: image_dir.mkdir(parents=True, exist_ok=True))
    await trio.to_thread.run_sync(lambda: check_room(image_dir or tempfile.gettempdir(),
                                                     2 * declared + IMAGE_UPLOADS.used_bytes,
                                                     what=f"the image upload of {declared} bytes"))  # Rule 4
    with IMAGE_UPLOADS.reserve(2 * declared), \
            tempfile.TemporaryFile(dir=image_dir, prefix="suanli-upload-") as f:
        status("need_image", f"send the archive of {image}")
        await drained()
        sha = await receive_blob_to_file(framed, "image", declared, MAX_IMAGE_BYTES, f, allowance_s=allowance_s,
                                         window_s=window_s)
        status("loading_image", "")
        # own_thread: a long load holds none of the engine's shared worker tokens.
        image_id: str = await engine.call(load_image_archive, engine.client, f, archive_sha256=archive_sha256,
                                          image_id=image, known_sha256=sha, work_dir=image_dir, what="load image",
                                          own_thread=True, store=store, partial=partial)
    if image_dir is not None:
        await engine.call(record_loaded, image_dir, engine.client, image_id, wall_ms(), what="note a loaded image")
    return image_id


T = TypeVar("T")


async def unless_stopped(work: Callable[[], Awaitable[T]], stop_requested: trio.Event,
                         stop_reason: Callable[[], str | None], peer: str) -> T:
    """``work`` (the preparation), abandoned when the daemon asks every job to stop (graceful shutdown):
    SuanliError with the stop's reason. An upload past its budget is the buyer's fault."""
    result: list[T] = []
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                result.append(await work())
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await stop_requested.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(watch)
    except* trio.TooSlowError:
        failure = RemoteProtocolError("the buyer's upload was too slow", peer=peer)
    except* (SuanliError, OSError) as group:
        failure = first_leaf(group)
    if failure is not None:
        raise failure
    if not result:
        raise SuanliError(f"the job was stopped before it started ({stop_reason()})",
                          reason=stop_reason() or PROVIDER_FAULT)
    return result[0]
