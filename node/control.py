"""The provider's local control API: a unix socket in the data directory, mode 0600.

One request per connection: the client sends one JSON line (``{"cmd": "status"}``), the daemon answers
one JSON line and closes. Only the operator (the socket's owner) can connect.
Rule 1: the socket is created with a umask that leaves it 0600 from the first instant, and a stale
socket file from a crashed run is replaced.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2p.errors import SuanliError

log = logging.getLogger("suanli.node.control")
SOCKET_NAME = "control.sock"
MAX_REQUEST = 4096


async def listen_private(path: Path) -> trio.SocketListener:
    """A unix socket only its owner can use (Rule 1), replacing a stale one; refused while one answers."""
    if await _answers(path):
        raise SuanliError(f"{path}: another daemon is already serving this data directory")
    await trio.Path(path).unlink(missing_ok=True)  # a stale socket of a crashed run (Rule 1)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)


async def _answers(path: Path) -> bool:
    if not await trio.Path(path).is_socket():
        return False
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            with trio.fail_after(2):
                await probe.connect(str(path))
        except (OSError, trio.TooSlowError):
            return False
    return True


async def serve_control(path: Path, status: Callable[[], dict[str, Any]], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    listener = await listen_private(path)
    task_status.started()
    try:
        async with listener:
            async with trio.open_nursery() as nursery:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(_answer, stream, status)
    finally:
        with trio.CancelScope(shield=True):
            await trio.Path(path).unlink(missing_ok=True)


async def _answer(stream: trio.SocketStream, status: Callable[[], dict[str, Any]]) -> None:
    async with stream:
        try:
            with trio.fail_after(5):
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = await stream.receive_some(MAX_REQUEST)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data.decode() or "{}")
                if not isinstance(request, dict):
                    reply: dict[str, Any] = {"ok": False, "error": "a request is one JSON object"}
                elif request.get("cmd") == "status":
                    reply = {"ok": True, "status": status()}
                else:
                    reply = {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}
                await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.TooSlowError, ValueError, trio.BrokenResourceError) as exc:
            log.info("control request dropped: %s", exc)
        except Exception:  # a per-connection boundary: one bad request never takes the daemon down
            log.exception("control request failed")


def query(path: Path, cmd: str = "status", timeout_s: float = 5.0) -> dict[str, Any]:
    """The client side, blocking (``suanli status`` is a short offline-style command)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except FileNotFoundError:
        raise SuanliError(f"no provider is running here ({path} does not exist); start one with "
                          "`suanli provide --config FILE`") from None
    except OSError as exc:
        raise SuanliError(f"cannot reach the provider's control socket {path}: {exc.strerror or exc}") from exc
    reply: dict[str, Any] = json.loads(data.decode())
    if not reply.get("ok"):
        raise SuanliError(f"the provider refused: {reply.get('error')}")
    return reply
