"""Security and muxer choice, and Yamux: the receive window kept, window updates batched, lean frame
I/O (items 6; issue 13 M1; found here)."""

from __future__ import annotations

from typing import Any

import libp2p
import libp2p.stream_muxer.yamux.yamux as _yamux_module
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.exceptions import RawConnError
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from p2p.errors import LocalProtocolError
from p2p.limits import YAMUX_WINDOW_BYTES
from p2p.workarounds._shape import LIBP2P_VERSION, _require_parameters


# --- found here (issue 13 M1): Yamux keeps what a peer sends beyond the receive window ----------
# The reader logs "peer exceeded receive window" and appends the bytes anyway, so a peer that
# ignores flow control can grow one stream's buffer without limit. go-yamux treats it as a protocol
# error and closes the connection; so does this: a stream's buffer never holds more than its window.
class _WindowedBuffer(bytearray):
    conn: Yamux
    stream_id: int

    def extend(self, data: Any) -> None:
        stream = self.conn.streams.get(self.stream_id)
        window = min(stream.target_recv_window, YAMUX_WINDOW_BYTES) if stream is not None else YAMUX_WINDOW_BYTES
        if len(self) + len(data) > window:
            self.conn.event_shutting_down.set()
            raise RawConnError(f"peer {self.conn.peer_id} sent {len(self) + len(data) - window} bytes "
                               f"beyond the receive window of stream {self.stream_id}")
        super().extend(data)


class _WindowedBuffers(dict):  # type: ignore[type-arg]
    def __init__(self, conn: Yamux) -> None:
        super().__init__()
        self.conn = conn

    def __setitem__(self, stream_id: int, buf: bytearray) -> None:
        windowed = _WindowedBuffer(buf)
        windowed.conn = self.conn
        windowed.stream_id = stream_id
        super().__setitem__(stream_id, windowed)


_yamux_init = Yamux.__init__


def _windowed_init(self: Yamux, *args: Any, **kwargs: Any) -> None:
    _yamux_init(self, *args, **kwargs)
    buffers = _WindowedBuffers(self)
    for stream_id, buf in self.stream_buffers.items():
        buffers[stream_id] = buf
    self.stream_buffers = buffers


# Found in review (issue 13 M1): py-libp2p's auto-tuning doubles a stream's window while its reader
# keeps up, to MAX_WINDOW_SIZE = 16 MiB (go-yamux's maximum), so a peer could leave 16 MiB per stream
# waiting for a reader that has slowed down: 64 times what p2p.limits counted. The module global is
# read at call time (YamuxStream._apply_autotune_epoch, and the reader's guard against oversized
# frames, whose 64 KiB frames stay far below), so capping it caps every window; the cap is
# p2p.limits.YAMUX_WINDOW_BYTES, which inbound_memory_bound counts.
def cap_yamux_window() -> None:
    _require_parameters(YamuxStream, "_apply_autotune_epoch", ("self", "buffered"))
    start = getattr(_yamux_module, "DEFAULT_WINDOW_SIZE", None)
    if not isinstance(getattr(_yamux_module, "MAX_WINDOW_SIZE", None), int) or not isinstance(start, int) \
            or start > YAMUX_WINDOW_BYTES:  # a window that starts above the cap would cut honest peers off
        raise LocalProtocolError(f"py-libp2p {libp2p.__version__}: Yamux's window constants changed "
                                 f"(verified on {LIBP2P_VERSION})", expected=YAMUX_WINDOW_BYTES, actual=start)
    _yamux_module.MAX_WINDOW_SIZE = YAMUX_WINDOW_BYTES


def enforce_yamux_window() -> None:
    cap_yamux_window()
    if Yamux.__init__ is not _windowed_init:
        Yamux.__init__ = _windowed_init  # type: ignore[method-assign]

# --- item 6: the default host accepts /plaintext/2.0.0 (unauthenticated peer ids), TLS, secio ----
# Also issue 7: py-libp2p's TLS certificate is rejected by js-libp2p, so Noise is the only choice.
def noise_only(key_pair: KeyPair) -> dict[TProtocol, Any]:
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=_new_x25519_key_pair().private_key)
    }


def yamux_only() -> dict[TProtocol, Any]:
    """Yamux only: the default also offers mplex, which go-libp2p dropped (interop section)."""
    batch_window_updates()
    lean_frame_io()
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


# --- found here: Yamux sends a WINDOW_UPDATE after (almost) every read ------------------------------
# py-libp2p credits the peer's window after each read unless a full half-window is due ("release on
# read", and a "partial slack" rule that fires on any read even with that knob off), so a stream that
# trades small messages (a receipt, then its countersignature, every second) carries one window update
# per message: twice the frames, each one encrypted, written, received and parsed on both sides (about
# 15 % of a round trip's CPU, measured). go-yamux credits once half the window has been consumed; this
# restores that rule and keeps py-libp2p's window auto-tuning (its target still doubles for fast bulk
# transfers). Flow control is unchanged: a sender never has less than half a window of credit.
async def _credit_half_windows(self: YamuxStream, *, bytes_read: int = 0) -> None:
    # Nothing due (almost every read): decided without taking window_lock, so a read costs no extra
    # pass through the scheduler. Safe in trio: every holder of window_lock changes the window in
    # one synchronous step, so what is read here is never half-updated; the check is repeated
    # under the lock before anything changes.
    if _window_consumed(self)[0] < self.target_recv_window // 2:
        return
    async with self.window_lock:
        consumed, buffered = _window_consumed(self)
        if consumed < self.target_recv_window // 2:
            return
        self.recv_window += consumed
        increment = consumed + self._apply_autotune_epoch(buffered)
    await self.send_window_update(increment, skip_lock=True)


def _window_consumed(stream: YamuxStream) -> tuple[int, int]:
    """(window consumed since the last credit, bytes still buffered for the reader)."""
    buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
    return int(stream.target_recv_window - (stream.recv_window + buffered)), buffered


def batch_window_updates() -> None:
    YamuxStream._auto_tune_and_send_window_update = _credit_half_windows  # type: ignore[method-assign]


# --- found here: each frame takes more trips through the scheduler than it needs ----------------------
# Measured on the provider's receipt loop (one receipt out, one countersignature in, per job-second):
# - TrioTCPStream.read(n) asks the socket for exactly n bytes, and Noise reads a 2-byte length before
#   each message body: two recv calls, two lock acquisitions and four scheduler passes per message.
#   ``_read_ahead`` asks for what is there (up to 64 KiB) and keeps the rest for the next read; a read
#   served from what is kept does not wait, like SecureSession.read serving its own buffer.
# - Yamux._write_frame builds a debug line for every frame (unpacking the header it just packed,
#   naming its flags) even with debug logging off, and checkpoints once more after the write has
#   already passed four checkpoints. And frames of many streams written at once (a provider's
#   receipts, all issued on the same metering tick) queue on the connection's write lock and go out
#   one by one: one encryption, one send and three scheduler passes each. ``_write_frame`` keeps one
#   writer at a time and the frames' order, and the writer that holds the lock sends every frame
#   queued behind it in the same write (a Noise message carries any bytes of the Yamux stream);
#   the writers of those frames then return, or raise what the write raised. A writer cancelled
#   before its frame was taken leaves nothing behind, as before; one cancelled while another writer
#   is already sending its frame raises Cancelled although the frame goes out (before, it would not
#   have been sent, and the stream's window would have been charged for it all the same).
# Together about 10 % of a round trip's CPU on both sides, and 8 % more with 50 streams writing at
# once (tests: the round trip is unchanged).
READ_AHEAD_BYTES = 64 * 1024


async def _read_ahead(self: TrioTCPStream, n: int | None = None) -> bytes:
    kept = _take_kept(self, n)
    if kept is not None:
        return kept
    async with self.read_lock:
        if n is not None and n == 0:
            return b""
        kept = _take_kept(self, n)  # another reader may have kept some while this one waited
        if kept is not None:
            return kept
        try:
            data = await self.stream.receive_some(None if n is None else max(n, READ_AHEAD_BYTES))
        except trio.BrokenResourceError as error:  # as the original: the peer reset the connection
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {error}",
                                        transport="tcp") from error
        except trio.ClosedResourceError:  # as the original: closed here, read as EOF
            return b""
        if n is not None and len(data) > n:
            self.__dict__["_suanli_kept"] = bytearray(data[n:])
            return data[:n]
        return data


def _take_kept(stream: TrioTCPStream, n: int | None) -> bytes | None:
    kept: bytearray | None = stream.__dict__.get("_suanli_kept")
    if not kept or n == 0:
        return None
    if n is None or n >= len(kept):
        stream.__dict__["_suanli_kept"] = None
        return bytes(kept)
    out = bytes(kept[:n])
    del kept[:n]
    return out


class _QueuedFrame:
    __slots__ = ("data", "outcome")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.outcome: BaseException | bool | None = None  # None: queued; True: written; else: the error


async def _write_frame(self: Yamux, data: bytes) -> None:
    queue: list[_QueuedFrame] | None = self.__dict__.get("_suanli_frames")
    if queue is None:
        queue = self.__dict__["_suanli_frames"] = []
    frame = _QueuedFrame(data)
    queue.append(frame)
    try:
        async with self._write_lock:
            if frame.outcome is None:  # not yet sent by an earlier holder: send it and all queued since
                batch = queue[:]
                queue.clear()
                try:
                    await self.secured_conn.write(data if len(batch) == 1 else b"".join(f.data for f in batch))
                except Exception as exc:
                    for f in batch:
                        f.outcome = exc
                    raise
                except BaseException:  # the holder was cancelled mid-write: the others' frames are lost
                    for f in batch:
                        f.outcome = MuxedConnUnavailable("the write carrying this frame was abandoned")
                    raise
                for f in batch:
                    f.outcome = True
    except BaseException:
        if frame.outcome is None and frame in queue:  # cancelled before anyone took it: not written
            queue.remove(frame)
        raise
    if frame.outcome is not True:
        assert isinstance(frame.outcome, BaseException)
        raise frame.outcome


_LEAN_FRAME_IO: list[bool] = []  # applied once per process (a test may wrap the methods afterwards)


def lean_frame_io() -> None:
    if _LEAN_FRAME_IO:
        return
    TrioTCPStream.read = _read_ahead  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    _LEAN_FRAME_IO.append(True)
