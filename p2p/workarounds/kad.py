"""Kademlia and identify: the ADD_PROVIDER echo go-libp2p misreads (issue 7), the inbound KAD stream
limit (item 18) and the size of py-libp2p's own messages (issue 13 M1)."""

from __future__ import annotations

from typing import Any

import libp2p.kad_dht.kad_dht as _kad_module
import libp2p.utils.varint as _varint_module
import trio
from libp2p.abc import IHost, INetStream
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage

from p2p.framing import DEFAULT_MAX_FRAME_BYTES, encode_frame
from p2p.workarounds._shape import _require_parameters
from p2p.workarounds.handlers import safe_stream_handler


# --- issue 7 / docs/INTEROP.md: py replies to ADD_PROVIDER ------------------------------------
# go-libp2p-kad-dht sends ADD_PROVIDER fire-and-forget on a reused stream; py's echo is read as the
# answer to go's next request, every later answer is one behind, and go later panics. Suanli's KAD
# handler passes the stock one a stream whose writes drop the ADD_PROVIDER echo.
class _NoAddProviderEcho:
    """A stream proxy that swallows complete ADD_PROVIDER response frames written to it."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._pending = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def write(self, data: bytes) -> None:
        # The handler writes varint(len) and the message as two writes; hold bytes until a whole
        # frame is present, then forward or drop it.
        self._pending += data
        while True:
            frame = _split_varint_frame(self._pending)
            if frame is None:
                return
            whole, body = frame
            del self._pending[:whole]
            if not _is_add_provider(body):
                await self._stream.write(_frame_bytes(body))


def _split_varint_frame(buf: bytearray) -> tuple[int, bytes] | None:
    length = shift = 0
    for i, byte in enumerate(buf[:10]):
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            end = i + 1 + length
            if len(buf) < end:
                return None
            return end, bytes(buf[i + 1:end])
    return None


def _frame_bytes(body: bytes) -> bytes:
    return encode_frame(body)  # the one uvarint framing, shared by Kademlia and our protocols


def _is_add_provider(body: bytes) -> bool:
    try:
        msg = KadMessage()
        msg.ParseFromString(body)
    except Exception:
        return False
    return bool(msg.type == KadMessage.MessageType.ADD_PROVIDER)


# --- item 18: the DHT serves at most 12 inbound KAD streams and resets the rest -----------------
# A stream holds its slot until the asker closes it, so 25 buyers looking up at once (or a round of
# concurrent refreshes) get most of their queries reset at every server (bench/overlay.py at N=25:
# find_providers found as few as 1 of 25 providers). Suanli's lookups are bounded (p2p.dht).
KAD_INBOUND_STREAMS = 128

# --- issue 13 M1: py-libp2p's own protocols buffer large half-sent messages ------------------------
# The Kademlia server reads messages of up to 4 MiB, Pubsub RPCs and identify(-push) messages of up to
# 1 MiB, as they arrive
# and with no deadline, so one stream with a half-sent message held up to 4 MiB: 16 times what
# p2p.limits counts per stream. Suanli's DHT messages (provider records, peer lists) and gossip RPCs
# (signed offers) are a few KiB, so both are held to the frame size of our own protocols, and the
# bound of p2p.limits holds for every inbound stream.
LIBP2P_MESSAGE_BYTES = DEFAULT_MAX_FRAME_BYTES


def widen_kad_inbound_limit(dht: KadDHT) -> None:
    dht._inbound_limiter = trio.CapacityLimiter(KAD_INBOUND_STREAMS)
    _kad_module.MAX_DHT_MESSAGE_SIZE = LIBP2P_MESSAGE_BYTES  # read by the inbound handler only


def limit_identify_messages() -> None:
    """Identify and identify-push read messages of up to 1 MiB (the reader's default length)."""
    # The defaults are rewritten by position: check the parameters they belong to first.
    reader = _require_parameters(_varint_module, "read_length_prefixed_protobuf",
                                 ("stream", "use_varint_format", "max_length"))
    if reader.__defaults__ != (True, LIBP2P_MESSAGE_BYTES):
        reader.__defaults__ = (True, LIBP2P_MESSAGE_BYTES)


def silence_add_provider_echo(host: IHost, dht: KadDHT) -> None:
    """Serve KAD through the stock handler, minus its ADD_PROVIDER reply (and exception-safe)."""

    async def handle(stream: INetStream) -> None:
        await dht.handle_stream(_NoAddProviderEcho(stream))  # type: ignore[arg-type]

    host.set_stream_handler(KAD_PROTOCOL_ID, safe_stream_handler(handle, str(KAD_PROTOCOL_ID)))
