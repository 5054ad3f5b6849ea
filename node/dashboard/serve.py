"""``serve_dashboard``: the dashboard as one more task of ``suanli provide``'s trio run (issue 20).

    await nursery.start(serve_dashboard, data_dir, port, runtime.status)  -> the URL, without the token
    await nursery.start(partial(serve_dashboard, home, port, agent.status, side="buyer"))  (``suanli agent``)

Two tasks under one nursery, owned by the caller: hypercorn's trio worker serving the Starlette app
(node.dashboard.app) on 127.0.0.1, and the board's refresher (node.dashboard.board) every
``REFRESH_S``. Cancelling the caller's scope ends both.

Rule 1: 127.0.0.1 only, never another address. The port is the configuration's; when it is taken (a
second provider on this machine), a free one is used and the log says so: the dashboard is the
operator's window, never a reason for the daemon not to sell.
Rule 2: the token is ``<data dir>/dashboard.token`` (32 random bytes, URL-safe, 0600), made once and kept;
``<data dir>/dashboard.json`` (0600) says the URL while the daemon runs and is removed when it stops.
``suanli dashboard`` reads both (node.commands.dashboard). The buyer's side (``suanli agent``) keeps its own,
``agent-dashboard.token`` and ``agent-dashboard.json``: a provider and an agent may share a data directory.
Rule 3: a refresh that fails is logged and retried at the next tick; it never ends the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from node.dashboard.board import Board

log = logging.getLogger("suanli.dashboard")

TOKEN_FILE = "dashboard.token"
URL_FILE = "dashboard.json"
AGENT_TOKEN_FILE = "agent-dashboard.token"
AGENT_URL_FILE = "agent-dashboard.json"
AGENT_PORT = 8743  # the provider's default is 8742 (node.config)
REFRESH_S = 1.0  # a co-signed receipt is on the page within REFRESH_S plus one read (issue 20: within 2 s)


def files_for(side: str) -> tuple[str, str]:
    """Rule 2: (token file, URL file) of the provider's dashboard or the buyer's."""
    return (AGENT_TOKEN_FILE, AGENT_URL_FILE) if side == "buyer" else (TOKEN_FILE, URL_FILE)


def load_token(data_dir: Path, name: str = TOKEN_FILE) -> str:
    """Rule 2: the token, made on first use (0600, written atomically)."""
    path = data_dir / name
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    return token


def bind_loopback(port: int) -> socket.socket:
    """Rule 1: a listening socket on 127.0.0.1:port, else on a free port of 127.0.0.1."""
    for attempt in (port, 0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not SO_REUSEPORT: one owner per port
        try:
            sock.bind(("127.0.0.1", attempt))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or attempt == 0:
                raise
            log.warning("dashboard: port %d on 127.0.0.1 is taken; using a free one", port)
            continue
        sock.listen(64)
        sock.setblocking(False)
        return sock
    raise AssertionError("unreachable")


async def serve_dashboard(data_dir: Path, port: int, status: Callable[[], dict[str, Any]], *, side: str = "provider",
                          task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """``side``: "provider" (``<data dir>/node.db``) or "buyer" (``<data dir>/buyer.db``, node.dashboard.buyer)."""
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    from node.dashboard.app import BUYER, PROVIDER, build_app
    from node.dashboard.buyer import BuyerBoard

    token_file, url_name = files_for(side)
    token = load_token(data_dir, token_file)
    sock = bind_loopback(port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    board = BuyerBoard(data_dir, url=url) if side == "buyer" else Board(data_dir / "node.db", url=url)
    wake = trio.Event()

    def changed() -> trio.Event:
        return wake

    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("suanli.dashboard.http")  # hypercorn's own lines ("CTRL + C to quit"):
    config.errorlog.setLevel(logging.WARNING)                      # only its warnings and errors
    config.graceful_timeout = 1.0
    app = wrap_app(build_app(board, token, changed, BUYER if side == "buyer" else PROVIDER),
                   config.wsgi_max_body_size, "asgi")
    url_file = data_dir / url_name
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(worker_serve, app, config, sockets=Sockets([], [sock], [])))
            await _refresh(board, status)
            fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"url": url, "pid": os.getpid()}, fh)
            log.info("%s dashboard on %s (suanli dashboard%s prints it with the token)", side, url,
                     " --agent" if side == "buyer" else "")
            task_status.started(url)
            while True:
                await trio.sleep(REFRESH_S)
                if await _refresh(board, status):
                    wake.set()
                    wake = trio.Event()
    finally:
        url_file.unlink(missing_ok=True)


async def _refresh(board: Board, status: Callable[[], dict[str, Any]]) -> bool:
    try:
        return await trio.to_thread.run_sync(board.refresh, status(), time.time_ns() // 1_000_000)
    except Exception as exc:  # Rule 3: the next tick tries again
        log.warning("dashboard: refresh failed: %s", exc)
        return False
