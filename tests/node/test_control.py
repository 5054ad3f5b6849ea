"""The provider's control socket: 0600, answers status, survives malformed requests."""

from __future__ import annotations

import os
import socket

import trio

from node.control import query, serve_control


async def _raw(path, payload: bytes) -> bytes:
    def call() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(payload)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    return await trio.to_thread.run_sync(call)


async def test_status_and_malformed_requests(tmp_path):
    path = tmp_path / "control.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, lambda: {"peer_id": "x"})
        assert os.stat(path).st_mode & 0o777 == 0o600
        for bad in (b"[1]\n", b"not json\n", b"\xff\xfe\n", b'{"cmd": "reboot"}\n'):
            await _raw(path, bad)
        reply = await trio.to_thread.run_sync(query, path)
        assert reply["status"] == {"peer_id": "x"}
        nursery.cancel_scope.cancel()
    assert not path.exists()
