"""Regression tests for p2p.workarounds.yamux: Yamux window updates and lean frame I/O (split from
test_workarounds.py; each fails if its workaround is removed)."""

from __future__ import annotations

import trio
import trio.lowlevel

from p2p import workarounds
from p2p.host import open_host
from p2p.testing import (
    loopback_config,
)


# found here: a window update after every read --------------------------------------------------
async def test_small_messages_do_not_each_cost_a_window_update(monkeypatch):
    import struct

    from libp2p.stream_muxer.yamux import yamux as yamux_module

    frames: list[int] = []
    workarounds.yamux_only()  # the frame writer as open_host leaves it, wrapped below
    write_frame = yamux_module.Yamux._write_frame

    async def counting(self, data: bytes) -> None:
        frames.append(struct.unpack(yamux_module.YAMUX_HEADER_FORMAT, data[:yamux_module.HEADER_SIZE])[1])
        await write_frame(self, data)

    monkeypatch.setattr(yamux_module.Yamux, "_write_frame", counting)
    await _echo_round_trips(200, size=600, on_open=lambda stream: frames.clear())  # bounded: 200 round trips
    data, updates = frames.count(yamux_module.TYPE_DATA), frames.count(yamux_module.TYPE_WINDOW_UPDATE)
    assert data >= 400
    assert updates < data // 10  # with the defect: one update per message read (about 400)


# found here: more scheduler passes and formatting per frame than needed (lean_frame_io) ------------
async def _echo_round_trips(n: int, *, size: int = 300, on_open=None) -> None:  # type: ignore[no-untyped-def]
    from p2p.framing import FramedStream, serve_framed

    async def echo(framed: FramedStream) -> None:
        while (frame := await framed.receive_frame()) is not None:
            await framed.send_frame(frame)

    handlers = {"/test/echo/1": serve_framed(echo, protocol="/test/echo/1", stream_budget_s=30)}
    async with open_host(loopback_config()) as a, open_host(loopback_config(handlers=handlers)) as b:
        await a.connect(b.addrs()[0])
        stream = await a.open_stream(b.peer_id, "/test/echo/1")
        if on_open is not None:
            on_open(stream)
        framed = FramedStream(stream)
        for i in range(n):
            await framed.send_frame(bytes([i % 256]) * size)
            assert await framed.receive_frame() == bytes([i % 256]) * size
        await framed.aclose()


async def test_a_noise_message_costs_one_socket_read_not_two(monkeypatch):
    reads: list[int] = []
    receive_some = trio.SocketStream.receive_some

    async def counting(self, max_bytes=None):  # type: ignore[no-untyped-def]
        data = await receive_some(self, max_bytes)
        reads.append(len(data))
        return data

    monkeypatch.setattr(trio.SocketStream, "receive_some", counting)
    async with trio.open_nursery():
        reads.clear()
        await _echo_round_trips(100)
    # 200 messages each way between the two hosts: the defect read a 2-byte length, then the body
    assert sum(1 for n in reads if n == 2) < 20
    assert len(reads) < 2 * 200 + 100


async def test_read_ahead_returns_what_was_asked_for_in_order_and_eof_as_before():
    from libp2p.io.trio import TrioTCPStream

    workarounds.lean_frame_io()
    left, right = trio.testing.memory_stream_pair()
    tcp = TrioTCPStream(right)  # type: ignore[arg-type]
    await left.send_all(b"abcdefgh")
    assert await tcp.read(2) == b"ab"  # the rest is kept ...
    assert await tcp.read(0) == b""
    assert await tcp.read(3) == b"cde"  # ... and served first, in order
    assert await tcp.read(None) == b"fgh"
    await left.send_all(b"ij")
    assert await tcp.read(5) == b"ij"  # up to n, as a socket read
    await left.aclose()
    assert await tcp.read(4) == b""  # EOF as before


async def test_the_yamux_frame_writer_formats_no_debug_line(monkeypatch):
    import sys

    from libp2p.stream_muxer.yamux import yamux as yamux_module

    workarounds.lean_frame_io()
    from_writer: list[str] = []
    debug = yamux_module.logger.debug

    def recording(msg, *args, **kwargs):  # type: ignore[no-untyped-def]
        if sys._getframe(1).f_code.co_name == "_write_frame":
            from_writer.append(str(msg))
        return debug(msg, *args, **kwargs)

    monkeypatch.setattr(yamux_module.logger, "debug", recording)
    await _echo_round_trips(20)
    assert from_writer == []  # the defect: a "YAMUX TX: ..." line built for every frame


async def test_a_read_with_no_window_update_due_takes_no_lock():
    import sys

    taken_by: list[str] = []

    class Recording:
        def __init__(self, lock: trio.Lock) -> None:
            self.lock = lock

        async def __aenter__(self) -> None:
            taken_by.append(sys._getframe(1).f_code.co_name)
            await self.lock.acquire()

        async def __aexit__(self, *exc: object) -> None:
            self.lock.release()

    def wrap(stream) -> None:  # type: ignore[no-untyped-def]
        stream.muxed_stream.window_lock = Recording(stream.muxed_stream.window_lock)

    await _echo_round_trips(100, on_open=wrap)
    assert taken_by.count("_credit_half_windows") < 10  # the defect: once per read (about 100)


class _FakeSecured:
    """A secured connection whose first write waits for ``release``; what it is given is recorded."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.writes: list[bytes] = []
        self.release = trio.Event()
        self.fail_on = fail_on

    async def write(self, data: bytes) -> None:
        self.writes.append(data)
        if len(self.writes) == 1:
            await self.release.wait()
        if self.fail_on == len(self.writes):
            raise ConnectionResetError("peer gone")


class _FakeYamux:
    def __init__(self, secured: _FakeSecured) -> None:
        self._write_lock = trio.Lock()
        self.secured_conn = secured


async def test_frames_queued_behind_a_write_go_out_together_in_order():
    conn = _FakeSecured()
    mux = _FakeYamux(conn)
    done: list[bytes] = []

    async def write(frame: bytes) -> None:
        await workarounds._write_frame(mux, frame)  # type: ignore[arg-type]
        done.append(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, b"a")
        await trio.testing.wait_all_tasks_blocked()
        for frame in (b"b", b"c", b"d"):
            nursery.start_soon(write, frame)
            await trio.testing.wait_all_tasks_blocked()
        conn.release.set()
    assert conn.writes == [b"a", b"bcd"]  # the defect: four writes, one per frame
    assert sorted(done) == [b"a", b"b", b"c", b"d"]


async def test_a_failed_write_fails_every_frame_it_carried_and_a_cancelled_frame_is_not_sent():
    conn = _FakeSecured(fail_on=2)
    mux = _FakeYamux(conn)
    outcomes: dict[bytes, str] = {}

    async def write(frame: bytes) -> None:
        try:
            await workarounds._write_frame(mux, frame)  # type: ignore[arg-type]
            outcomes[frame] = "sent"
        except ConnectionResetError:
            outcomes[frame] = "failed"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, b"a")
        await trio.testing.wait_all_tasks_blocked()
        gone = trio.CancelScope()

        async def cancelled() -> None:
            with gone:
                await workarounds._write_frame(mux, b"x")  # type: ignore[arg-type]
            outcomes[b"x"] = "cancelled"

        nursery.start_soon(cancelled)
        await trio.testing.wait_all_tasks_blocked()
        gone.cancel()
        for frame in (b"b", b"c"):  # one after the other: trio starts tasks in no set order
            nursery.start_soon(write, frame)
            await trio.testing.wait_all_tasks_blocked()
        conn.release.set()
    assert conn.writes == [b"a", b"bc"]  # x was withdrawn before it was taken
    assert outcomes == {b"a": "sent", b"x": "cancelled", b"b": "failed", b"c": "failed"}
