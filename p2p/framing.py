"""Framed request/response streams: the one helper every Suanli protocol speaks over libp2p.

Wire form (docs/PROTOCOL.md, "Frames"): each frame is ``uvarint(length) || payload``, the length an
unsigned LEB128 varint in its shortest form (as go-msgio's varint framing), the payload one canonical
msgpack value (``p2p.codec``). A stream carries frames in both directions until a side half-closes.

Rule 1: a frame longer than the stream's ``max_frame_bytes`` is refused from its length prefix alone,
before any of it is buffered; so is a non-minimal or overlong varint.
Rule 2: peer misbehaviour (garbage, oversize, a stream that ends mid-frame, a wrong record type, a
bad signature) raises ``RemoteProtocolError`` (or its ``CodecError`` / ``SignatureError``), fault
PEER, with ``peer`` set; ``serve_framed`` turns that into a reset of that one stream and a log line.
Rule 3: libp2p's exceptions are translated here, once, and nowhere else in Suanli: a reset or a broken
connection while reading, writing or closing is ``StreamBrokenError`` (fault ENVIRONMENT, not proven
the peer's; still a RemoteProtocolError for the handlers that drop the stream), a write after our own
close is ``LocalProtocolError`` (our bug). Callers read the error's ``fault`` (p2p.errors).
Rule 4: no timeouts in here; callers wrap calls in ``trio.fail_after`` (STYLE 2), with one exception
that belongs to the frame itself: a stream given ``frame_timeout_s`` (``serve_framed`` always gives
one) refuses a frame not complete that long after its first byte arrived, so a half-sent frame
holds its bytes and its stream for a bounded time (issue 13 M1). Idle time between frames is the
protocol's to bound.
Rule 5: a frame's declared length allocates nothing; its bytes are buffered as they arrive, in reads
of at most 64 KiB, so a stream holds at most its frame so far plus one read.
Own read loop rather than ``libp2p.utils.varint.read_varint_prefixed_bytes`` (docs/LIBP2P.md item 21: it
gives up after 100 partial reads, so 8 MiB messages fail).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.stream_muxer.exceptions import MuxedStreamEOF

from p2p.codec import pack, unpack
from p2p.envelope import Signed, open_signed
from p2p.errors import CodecError, LocalProtocolError, RemoteProtocolError, StreamBrokenError, SuanliError
from p2p.records import Record

log = logging.getLogger("suanli.p2p.framing")

DEFAULT_MAX_FRAME_BYTES = 256 * 1024
# A started frame must end within this (Rule 4): 256 KiB in 30 s is 8.7 KB/s, far below any link
# that can run a job.
DEFAULT_FRAME_TIMEOUT_S = 30.0
HARD_MAX_FRAME_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024
_MAX_VARINT_BYTES = 4  # 4 x 7 bits = 256 MiB, above HARD_MAX_FRAME_BYTES

R = TypeVar("R", bound=Record)


def encode_varint(n: int) -> bytes:
    if n < 0:
        raise LocalProtocolError("negative frame length", actual=n)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    return encode_varint(len(payload)) + payload


class FramedStream:
    """A libp2p stream seen as a sequence of bounded frames."""

    def __init__(self, stream: INetStream, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 frame_timeout_s: float | None = None) -> None:
        if not 0 < max_frame_bytes <= HARD_MAX_FRAME_BYTES:
            raise LocalProtocolError("max_frame_bytes out of range", limit=HARD_MAX_FRAME_BYTES,
                                     actual=max_frame_bytes)
        if frame_timeout_s is not None and not frame_timeout_s > 0:
            raise LocalProtocolError("frame_timeout_s must be positive", actual=frame_timeout_s)
        self.stream = stream
        self.max_frame_bytes = max_frame_bytes
        self.frame_timeout_s = frame_timeout_s
        self._buf = bytearray()
        self._eof = False
        try:
            self.peer: str = stream.muxed_conn.peer_id.to_base58()
        except Exception:
            self.peer = "?"

    # -- sending ------------------------------------------------------------------------------
    async def send_frame(self, payload: bytes) -> None:
        if len(payload) > self.max_frame_bytes:
            raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds this stream's limit",
                                     peer=self.peer, limit=self.max_frame_bytes, actual=len(payload))
        try:
            await self.stream.write(encode_frame(payload))
        except StreamClosed as exc:
            raise LocalProtocolError("write after this side closed the stream", peer=self.peer) from exc
        except (BaseLibp2pError, OSError) as exc:
            raise StreamBrokenError(f"stream to {self.peer} broke while writing: {exc!r}",
                                    peer=self.peer) from exc

    async def send(self, value: Any) -> None:
        """Send one value as a canonical msgpack frame."""
        await self.send_frame(pack(value))

    async def send_signed(self, signed: Signed[Any]) -> None:
        await self.send_frame(signed.to_bytes())

    # -- receiving ----------------------------------------------------------------------------
    async def receive_frame(self) -> bytes | None:
        """The next frame's payload, or None if the peer closed cleanly at a frame boundary."""
        if self.frame_timeout_s is None:
            return await self._receive_frame()
        if not self._buf and not await self._fill():  # idle until the frame's first byte (Rule 4)
            return None
        with trio.move_on_after(self.frame_timeout_s):
            return await self._receive_frame()
        raise RemoteProtocolError(
            f"a frame from {self.peer} was not complete {self.frame_timeout_s:g} s after it began "
            f"({len(self._buf)} bytes so far)", peer=self.peer, reason="frame_timeout",
            limit=self.frame_timeout_s)

    async def _receive_frame(self) -> bytes | None:
        length, header = await self._read_length()
        if length is None:
            return None
        need = header + length
        while len(self._buf) < need:
            if not await self._fill():
                raise RemoteProtocolError(
                    f"stream from {self.peer} ended mid-frame ({len(self._buf) - header} of {length} bytes)",
                    peer=self.peer, expected=length, actual=len(self._buf) - header)
        payload = bytes(self._buf[header:need])
        del self._buf[:need]
        return payload

    async def receive(self) -> Any:
        """The next frame decoded as one canonical msgpack value; EOF here is the peer's fault."""
        payload = await self.receive_frame()
        if payload is None:
            raise RemoteProtocolError(f"{self.peer} closed the stream before sending a frame", peer=self.peer)
        try:
            return unpack(payload, self.max_frame_bytes)
        except CodecError as exc:
            raise _with_peer(exc, self.peer) from exc

    async def receive_signed(self, cls: type[R]) -> Signed[R]:
        """The next frame as a verified signed envelope of record type ``cls``."""
        payload = await self.receive_frame()
        if payload is None:
            raise RemoteProtocolError(f"{self.peer} closed the stream before sending a {cls.TAG}",
                                      peer=self.peer)
        try:
            return open_signed(payload, cls)
        except RemoteProtocolError as exc:  # CodecError, SignatureError
            raise _with_peer(exc, self.peer) from exc

    async def frames(self) -> AsyncIterator[bytes]:
        """Every frame until the peer half-closes."""
        while (payload := await self.receive_frame()) is not None:
            yield payload

    # -- closing ------------------------------------------------------------------------------
    async def close_write(self) -> None:
        """Half-close: the peer sees EOF after our last frame; we can still receive."""
        try:
            await self.stream.close_write()
        except (BaseLibp2pError, OSError) as exc:
            raise StreamBrokenError(f"stream to {self.peer} broke while closing: {exc!r}",
                                    peer=self.peer) from exc

    async def aclose(self) -> None:
        """Close both directions; never raises for a stream the peer already broke."""
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.stream.close()
            except (BaseLibp2pError, OSError):
                pass

    async def reset(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.stream.reset()
            except (BaseLibp2pError, OSError):
                pass

    # -- internals ----------------------------------------------------------------------------
    async def _read_length(self) -> tuple[int | None, int]:
        """(length, header size) of the next frame, or (None, 0) at a clean EOF (Rule 1)."""
        i = 0
        length = 0
        while True:
            if i == len(self._buf):
                if not await self._fill():
                    if i == 0:
                        return None, 0
                    raise RemoteProtocolError(f"stream from {self.peer} ended inside a frame header",
                                              peer=self.peer)
            byte = self._buf[i]
            length |= (byte & 0x7F) << (7 * i)
            i += 1
            if not byte & 0x80:
                break
            if i >= _MAX_VARINT_BYTES:
                raise RemoteProtocolError(f"frame header from {self.peer} is not a valid length",
                                          peer=self.peer, limit=self.max_frame_bytes)
        if i > 1 and self._buf[i - 1] == 0:
            raise RemoteProtocolError(f"non-minimal frame length from {self.peer}", peer=self.peer)
        if length > self.max_frame_bytes:
            raise RemoteProtocolError(f"oversize frame from {self.peer}: {length} bytes",
                                      peer=self.peer, limit=self.max_frame_bytes, actual=length)
        return length, i

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False at EOF (Rule 3: libp2p errors translated)."""
        if self._eof:
            return False
        try:
            data = await self.stream.read(_READ_CHUNK)
        except (StreamEOF, MuxedStreamEOF):
            self._eof = True
            return False
        except StreamReset as exc:
            raise StreamBrokenError(f"{self.peer} reset the stream", peer=self.peer, reason="reset") from exc
        except (BaseLibp2pError, OSError) as exc:
            raise StreamBrokenError(f"stream from {self.peer} broke while reading: {exc!r}",
                                    peer=self.peer) from exc
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True


def _with_peer(exc: SuanliError, peer: str) -> SuanliError:
    """The same error with ``peer`` filled in (errors carry structured fields, STYLE 4)."""
    if getattr(exc, "peer", None):
        return exc
    fields = dict(exc.fields)
    fields["peer"] = peer
    return type(exc)(f"{exc.message} (from {peer})", **fields)


FramedHandler = Callable[[FramedStream], Awaitable[None]]


def serve_framed(handler: FramedHandler, *, protocol: str, stream_budget_s: float,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S) -> Callable[[INetStream], Awaitable[None]]:
    """A libp2p stream handler that runs ``handler`` on a FramedStream (Rule 2).

    The server side is a boundary, so it sets its own budget: a stream still open after
    ``stream_budget_s`` (a peer that stalls mid-frame, or never sends) is reset, and so is one whose
    frame is not complete ``frame_timeout_s`` after it began (Rule 4). A RemoteProtocolError
    resets that stream and is logged at INFO with the peer; the stream is closed when the handler
    returns. Other exceptions are left to ``safe_stream_handler`` (p2p.host wraps every handler in
    it), which logs them as bugs and resets the stream.
    """

    async def handle(stream: INetStream) -> None:
        framed = FramedStream(stream, max_frame_bytes=max_frame_bytes, frame_timeout_s=frame_timeout_s)
        try:
            with trio.fail_after(stream_budget_s):
                await handler(framed)
        except trio.TooSlowError:
            log.info("%s: stream from %s exceeded its %.1f s budget", protocol, framed.peer, stream_budget_s)
            await framed.reset()
            return
        except RemoteProtocolError as exc:
            log.info("%s: dropping stream from %s: %s", protocol, framed.peer, exc)
            await framed.reset()
            return
        await framed.aclose()

    return handle
