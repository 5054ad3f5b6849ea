"""Framed streams: bounded frames, misbehaving peers cut off, the node keeps serving."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

from p2p.envelope import sign_record
from p2p.errors import CodecError, LocalProtocolError, RemoteProtocolError, SignatureError
from p2p.framing import FramedStream, encode_frame, encode_varint, serve_framed
from p2p.host import open_host
from p2p.identity import generate_key
from p2p.records import PublicKey, Record, record
from p2p.testing import loopback_config


@record("test-note", 1)
@dataclass(frozen=True)
class Note(Record):
    author: PublicKey
    text: str
    SIGNERS = (("author", "author"),)


@record("test-other", 1)
@dataclass(frozen=True)
class Other(Record):
    author: PublicKey
    SIGNERS = (("author", "author"),)


# --- pure: the frame format over a scripted stream ----------------------------------------------
class ScriptedStream:
    """Yields the given chunks to read(), then EOF; records writes."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.written = b""

    async def read(self, n):
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def write(self, data):
        self.written += data


@pytest.mark.parametrize("n, wire", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                     (300, b"\xac\x02"), (2**21, b"\x80\x80\x80\x01")])
def test_lengths_are_shortest_uvarints(n, wire):
    assert encode_varint(n) == wire


async def test_frames_split_anywhere_are_reassembled():
    wire = encode_frame(b"a" * 300) + encode_frame(b"") + encode_frame(b"xyz")
    framed = FramedStream(ScriptedStream([wire[i:i + 1] for i in range(len(wire))]), max_frame_bytes=1000)
    assert [f async for f in framed.frames()] == [b"a" * 300, b"", b"xyz"]


@pytest.mark.parametrize("wire, complaint", [
    (b"\x05ab", "mid-frame"),
    (b"\x85", "header"),
    (b"\x81\x00", "non-minimal"),
    (b"\xff\xff\xff\xff\x01", "not a valid length"),
    (encode_varint(1001), "oversize"),
])
async def test_malformed_input_is_a_remote_protocol_error(wire, complaint):
    framed = FramedStream(ScriptedStream([wire]), max_frame_bytes=1000)
    with pytest.raises(RemoteProtocolError, match=complaint):
        await framed.receive_frame()


async def test_clean_eof_and_value_decoding():
    framed = FramedStream(ScriptedStream([encode_frame(b"\x81\xa1a\x01")]))
    assert await framed.receive() == {"a": 1}
    assert await framed.receive_frame() is None
    with pytest.raises(RemoteProtocolError, match="before sending"):
        await FramedStream(ScriptedStream([])).receive()
    with pytest.raises(CodecError):  # a non-canonical map (keys out of order)
        await FramedStream(ScriptedStream([encode_frame(b"\x82\xa1b\x01\xa1a\x02")])).receive()


async def test_sending_more_than_the_limit_is_our_bug():
    framed = FramedStream(ScriptedStream([]), max_frame_bytes=10)
    with pytest.raises(LocalProtocolError):
        await framed.send_frame(b"x" * 11)


# --- real hosts ------------------------------------------------------------------------------
ECHO = "/t/echo/1"
NOTE = "/t/note/1"


async def _echo(framed: FramedStream) -> None:
    async for frame in framed.frames():
        await framed.send_frame(frame)


def _server_config(errors: list):
    async def take_note(framed: FramedStream) -> None:
        try:
            signed = await framed.receive_signed(Note)
        except RemoteProtocolError as exc:
            errors.append(exc)
            raise
        await framed.send({"ok": signed.record.text})

    return loopback_config(handlers={
        ECHO: serve_framed(_echo, protocol=ECHO, stream_budget_s=2.0, max_frame_bytes=4 << 20),
        NOTE: serve_framed(take_note, protocol=NOTE, stream_budget_s=2.0),
    })


async def _echo_once(client, server, payload: bytes) -> bytes:
    framed = FramedStream(await client.open_stream(server.peer_id, ECHO), max_frame_bytes=4 << 20)
    with trio.fail_after(20):
        await framed.send_frame(payload)
        await framed.close_write()
        reply = await framed.receive_frame()
    await framed.aclose()
    return reply


async def test_request_response_round_trip_including_a_2_mib_frame():
    async with open_host(_server_config([])) as server, open_host(loopback_config()) as client:
        await client.connect(server.addrs()[0])
        assert await _echo_once(client, server, b"hello") == b"hello"
        big = bytes(range(256)) * (8 << 10)  # 2 MiB: item 21 breaks libp2p's own reader at 8 MiB
        assert await _echo_once(client, server, big) == big


@pytest.mark.parametrize("junk", [b"\xff\xff\xff\xff\xff garbage", encode_varint(64 << 20)])
async def test_garbage_or_oversize_cuts_off_that_stream_only(junk):
    async with open_host(_server_config([])) as server, open_host(loopback_config()) as client:
        await client.connect(server.addrs()[0])
        bad = FramedStream(await client.open_stream(server.peer_id, ECHO))
        await bad.stream.write(junk)
        with trio.fail_after(10), pytest.raises(RemoteProtocolError):
            await bad.receive()  # reset (or closed) by the server: no answer
        assert await _echo_once(client, server, b"still here") == b"still here"


async def test_a_peer_that_stalls_mid_frame_is_cut_off_while_others_are_served():
    async with open_host(_server_config([])) as server, open_host(loopback_config()) as client:
        await client.connect(server.addrs()[0])
        stalled = FramedStream(await client.open_stream(server.peer_id, ECHO))
        await stalled.stream.write(encode_varint(100) + b"only part")
        assert await _echo_once(client, server, b"meanwhile") == b"meanwhile"
        with trio.fail_after(15), pytest.raises(RemoteProtocolError):
            await stalled.receive()  # the server's 2 s budget resets it
        half = FramedStream(await client.open_stream(server.peer_id, ECHO))
        await half.stream.write(encode_varint(100) + b"only part")
        await half.close_write()  # EOF mid-frame
        with trio.fail_after(15), pytest.raises(RemoteProtocolError):
            await half.receive()
        assert await _echo_once(client, server, b"after") == b"after"


async def test_wrong_record_type_and_bad_signature_are_refused():
    errors: list = []
    key = generate_key()
    async with open_host(_server_config(errors)) as server, open_host(loopback_config(key=key)) as client:
        await client.connect(server.addrs()[0])

        async def send(payload: bytes):
            framed = FramedStream(await client.open_stream(server.peer_id, NOTE))
            await framed.send_frame(payload)
            await framed.close_write()
            with trio.fail_after(10):
                return await framed.receive()

        good = sign_record(Note(author=key.public, text="hi"), key)
        assert await send(good.to_bytes()) == {"ok": "hi"}
        with pytest.raises(RemoteProtocolError):
            await send(sign_record(Other(author=key.public), key).to_bytes())
        forged = good.to_bytes().replace(b"hi", b"ho")
        with pytest.raises(RemoteProtocolError):
            await send(forged)
        assert await send(good.to_bytes()) == {"ok": "hi"}
    assert [type(e) for e in errors] == [CodecError, SignatureError]
    assert all(e.peer == key.peer_id for e in errors)
