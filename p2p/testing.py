"""Helpers for tests and benchmarks that run many in-process nodes on 127.0.0.1 (imports libp2p).

Like ``trio.testing``: shipped with the package so that tests of every package (and ``bench/``) share
one way to start a small network and to check that it left nothing behind.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from p2p.host import HostConfig, Node, open_host
from p2p.identity import NodeKey, generate_key

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


def count_trio_tasks() -> int:
    """Every task alive in this trio run (the root task included)."""
    stack = [trio.lowlevel.current_root_task()]
    n = 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


def live_threads() -> int:
    return threading.active_count()


def tcp_port_of(addr: str) -> int:
    parts = addr.split("/")
    return int(parts[parts.index("tcp") + 1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on ``host:port`` (a blocking probe, < 1 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def loopback_config(key: NodeKey | None = None, **fields: object) -> HostConfig:
    """A HostConfig listening on an OS-chosen loopback port, with quick bootstrap retries."""
    base = HostConfig(key=key or generate_key(), listen=LOOPBACK, connect_attempts=4, connect_backoff_s=0.1)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def open_network(n: int, make_config: Callable[[int, tuple[str, ...]], HostConfig] | None = None,
                       ) -> AsyncIterator[list[Node]]:
    """``n`` nodes; node 0 is the bootstrap (DHT server) and every other node joins through it.

    ``make_config(i, bootstrap_addrs)`` builds node i's config (default: ``loopback_config``).
    """
    if make_config is None:
        def make_config(i: int, bootstrap: tuple[str, ...]) -> HostConfig:
            return loopback_config(bootstrap=bootstrap)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_host(make_config(0, ())))
        nodes = [first]
        boot = (first.addrs()[0],)
        for i in range(1, n):
            nodes.append(await stack.enter_async_context(open_host(make_config(i, boot))))
        yield nodes


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until true; trio.TooSlowError after ``timeout_s`` (bounded in time)."""
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling state that no event reports
            await trio.sleep(interval_s)


def topic_peers(node: Node, topic: str) -> set[str]:
    """Peers this node knows to be subscribed to ``topic``."""
    return {p.to_base58() for p in node.pubsub.peer_topics.get(topic, set())}
