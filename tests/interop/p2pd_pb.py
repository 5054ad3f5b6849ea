"""The p2pd control protocol, hand-encoded: the few messages of ``p2pd.proto`` the suite uses (pure).

The daemon's control socket carries protobuf messages (proto2, package ``p2pclient.p2pd.pb``), each
prefixed with its length as an unsigned varint (gogo-protobuf's delimited reader/writer). The schema
ships in the hivemind 1.1.12 wheel as ``hivemind/proto/p2pd.proto`` (``scripts/fetch_p2pd.sh`` unpacks
it to ``.cache/p2pd/p2pd.proto``); the field numbers below are copied from that file.

A protobuf message is a sequence of (field number, wire type, value): varint (type 0) for enums,
integers and bools, length-delimited (type 2) for bytes, strings and sub-messages. Nothing else
appears in these messages, so that is all this module encodes; the decoder skips fixed32/64 fields.
No protoc and no generated code; the varint is p2p.framing's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2p.framing import encode_varint

# --- enums (p2pd.proto) --------------------------------------------------------------------------
# Request.Type
IDENTIFY, CONNECT, STREAM_OPEN, STREAM_HANDLER, DHT, LIST_PEERS, CONNMANAGER, DISCONNECT, PUBSUB = range(9)
# Response.Type
OK, ERROR = 0, 1
# DHTRequest.Type
(FIND_PEER, FIND_PEERS_CONNECTED_TO_PEER, FIND_PROVIDERS, GET_CLOSEST_PEERS, GET_PUBLIC_KEY, GET_VALUE,
 SEARCH_VALUE, PUT_VALUE, PROVIDE) = range(9)
# DHTResponse.Type
BEGIN, VALUE, END = 0, 1, 2
# PSRequest.Type
PS_GET_TOPICS, PS_LIST_PEERS, PS_PUBLISH, PS_SUBSCRIBE = range(4)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the daemon's own cap (network.MessageSizeMax)


class WireError(Exception):
    """Bytes from the daemon that are not the protobuf they should be."""


# --- primitives ----------------------------------------------------------------------------------
def encode_uvarint(n: int) -> bytes:
    return encode_varint(n + (1 << 64) if n < 0 else n)  # int64 fields: two's complement, as protobuf does


def decode_uvarint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when ``buf`` ends inside the varint."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + 10)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i + 1
    if len(buf) - pos >= 10:
        raise WireError("varint longer than 10 bytes")
    return None


def delimited(message: bytes) -> bytes:
    return encode_uvarint(len(message)) + message


def varint_field(number: int, value: int) -> bytes:
    return encode_uvarint(number << 3) + encode_uvarint(value)


def bytes_field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return encode_uvarint(number << 3 | 2) + encode_uvarint(len(data)) + data


def parse(message: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> every value of it, in order (ints for varints, bytes for the rest)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(message):
        got = decode_uvarint(message, pos)
        if got is None:
            raise WireError("message ends inside a field key")
        key, pos = got
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            got = decode_uvarint(message, pos)
            if got is None:
                raise WireError(f"message ends inside field {number}")
            value: int | bytes = got[0]
            pos = got[1]
        elif wire_type == 2:
            got = decode_uvarint(message, pos)
            if got is None or got[1] + got[0] > len(message):
                raise WireError(f"message ends inside field {number}")
            value, pos = bytes(message[got[1]:got[1] + got[0]]), got[1] + got[0]
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            continue
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


def _one_bytes(fields: dict[int, list[int | bytes]], number: int) -> bytes | None:
    values = fields.get(number)
    if not values:
        return None
    value = values[-1]
    if not isinstance(value, bytes):
        raise WireError(f"field {number} is not length-delimited")
    return value


def _all_bytes(fields: dict[int, list[int | bytes]], number: int) -> list[bytes]:
    values = fields.get(number, [])
    if not all(isinstance(v, bytes) for v in values):
        raise WireError(f"field {number} is not length-delimited")
    return [v for v in values if isinstance(v, bytes)]


def _one_int(fields: dict[int, list[int | bytes]], number: int, default: int = 0) -> int:
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if not isinstance(value, int):
        raise WireError(f"field {number} is not a varint")
    return value


# --- requests ------------------------------------------------------------------------------------
def request(kind: int, number: int | None = None, body: bytes = b"") -> bytes:
    """A ``Request`` of type ``kind``, with its sub-message ``body`` in field ``number``."""
    out = varint_field(1, kind)
    if number is not None:
        out += bytes_field(number, body)
    return out


def identify_request() -> bytes:
    return request(IDENTIFY)


def list_peers_request() -> bytes:
    return request(LIST_PEERS)


def connect_request(peer: bytes, addrs: Iterable[bytes], timeout_s: int = 0) -> bytes:
    body = bytes_field(1, peer) + b"".join(bytes_field(2, a) for a in addrs)
    if timeout_s:
        body += varint_field(3, timeout_s)
    return request(CONNECT, 2, body)


def disconnect_request(peer: bytes) -> bytes:
    return request(DISCONNECT, 7, bytes_field(1, peer))


def stream_open_request(peer: bytes, protocols: Iterable[str], timeout_s: int = 0) -> bytes:
    body = bytes_field(1, peer) + b"".join(bytes_field(2, p) for p in protocols)
    if timeout_s:
        body += varint_field(3, timeout_s)
    return request(STREAM_OPEN, 3, body)


def dht_request(kind: int, *, peer: bytes | None = None, cid: bytes | None = None, key: bytes | None = None,
                value: bytes | None = None, count: int = 0, timeout_s: int = 0) -> bytes:
    body = varint_field(1, kind)
    for number, data in ((2, peer), (3, cid), (4, key), (5, value)):
        if data is not None:
            body += bytes_field(number, data)
    if count:
        body += varint_field(6, count)
    if timeout_s:
        body += varint_field(7, timeout_s)  # seconds (the daemon's requestContext)
    return request(DHT, 5, body)


def pubsub_request(kind: int, topic: str | None = None, data: bytes | None = None) -> bytes:
    body = varint_field(1, kind)
    if topic is not None:
        body += bytes_field(2, topic)
    if data is not None:
        body += bytes_field(3, data)
    return request(PUBSUB, 8, body)


# --- responses -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerInfo:
    id: bytes
    addrs: tuple[bytes, ...]

    @classmethod
    def decode(cls, data: bytes) -> PeerInfo:
        f = parse(data)
        return cls(_one_bytes(f, 1) or b"", tuple(_all_bytes(f, 2)))


@dataclass(frozen=True)
class StreamInfo:
    peer: bytes
    addr: bytes
    proto: str

    @classmethod
    def decode(cls, data: bytes) -> StreamInfo:
        f = parse(data)
        return cls(_one_bytes(f, 1) or b"", _one_bytes(f, 2) or b"", (_one_bytes(f, 3) or b"").decode())


@dataclass(frozen=True)
class DHTResponse:
    type: int
    peer: PeerInfo | None
    value: bytes | None

    @classmethod
    def decode(cls, data: bytes) -> DHTResponse:
        f = parse(data)
        peer = _one_bytes(f, 2)
        return cls(_one_int(f, 1), PeerInfo.decode(peer) if peer is not None else None, _one_bytes(f, 3))


@dataclass(frozen=True)
class Response:
    type: int
    error: str | None = None
    stream_info: StreamInfo | None = None
    identify: PeerInfo | None = None  # IdentifyResponse has the same shape: id = 1, addrs = 2
    dht: DHTResponse | None = None
    peers: tuple[PeerInfo, ...] = ()
    ps_topics: tuple[str, ...] = ()
    ps_peer_ids: tuple[bytes, ...] = ()

    @classmethod
    def decode(cls, data: bytes) -> Response:
        f = parse(data)
        error = _one_bytes(f, 2)
        stream_info = _one_bytes(f, 3)
        ident = _one_bytes(f, 4)
        dht = _one_bytes(f, 5)
        ps = parse(_one_bytes(f, 7) or b"")
        return cls(
            type=_one_int(f, 1),
            error=(_one_bytes(parse(error), 1) or b"").decode(errors="replace") if error is not None else None,
            stream_info=StreamInfo.decode(stream_info) if stream_info is not None else None,
            identify=PeerInfo.decode(ident) if ident is not None else None,
            dht=DHTResponse.decode(dht) if dht is not None else None,
            peers=tuple(PeerInfo.decode(p) for p in _all_bytes(f, 6)),
            ps_topics=tuple(t.decode() for t in _all_bytes(ps, 1)),
            ps_peer_ids=tuple(_all_bytes(ps, 2)),
        )


@dataclass(frozen=True)
class PSMessage:
    from_id: bytes
    data: bytes
    seqno: bytes
    topics: tuple[str, ...] = field(default=())
    signature: bytes = b""
    key: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> PSMessage:
        f = parse(data)
        return cls(_one_bytes(f, 1) or b"", _one_bytes(f, 2) or b"", _one_bytes(f, 3) or b"",
                   tuple(t.decode() for t in _all_bytes(f, 4)), _one_bytes(f, 5) or b"", _one_bytes(f, 6) or b"")
