"""A watcher node for the cluster harness: a real buyer-side node that reports what the market shows it.

    python -m netlab.cluster_watch --bootstrap MULTIADDR [--bootstrap ...]

It joins like ``suanli offers`` does (DHT client, the offers topic with the real validator) and stays.
On stdout, one JSON line per event:

- ``{"event": "ready", "peer_id": ...}`` once joined;
- ``{"event": "offer", "provider", "seq", "created_ms", "at_ms", "free_cpu_millis"}`` the first time each
  (provider, seq) arrives on gossip (``at_ms - created_ms`` is the offer's propagation; every node runs
  on one machine, so the wall clocks are the same clock);
- answers to commands read from stdin, one JSON line each: ``{"op": "find"}`` times a DHT
  ``find_providers("any")`` (``{"event": "find", "ms", "count"}``); ``{"op": "collect", "wait_s": S}`` runs
  the buyer's own discovery (``collect_offers``: gossip plus a direct query to every provider the DHT
  names) and lists ``{"provider", "seq", "free_cpu_millis"}`` per live offer.

Every command is bounded (find 20 s, collect ``wait_s`` + 10 s); it exits when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

from node.overlay import BuyerOverlay
from p2p import dht
from p2p.gossip import offer_feed
from p2p.host import HostConfig, open_host
from p2p.identity import generate_key, peer_id_from_public
from p2p.offer_query import collect_offers

FIND_TIMEOUT_S = 20.0


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def watch(bootstrap: tuple[str, ...]) -> None:
    overlay = BuyerOverlay()
    key = generate_key()
    config = HostConfig(key=key, listen=("/ip4/0.0.0.0/tcp/0",), bootstrap=bootstrap, dht_mode="client",
                        topics=overlay.topics, require_bootstrap=False)
    async with open_host(config) as node, trio.open_nursery() as nursery:
        seen: set[tuple[str, int]] = set()

        async def feed() -> None:
            async for signed in offer_feed(node, overlay.ledger):
                o = signed.record
                provider = peer_id_from_public(o.provider)
                if (provider, o.seq) not in seen and len(seen) < 1_000_000:
                    seen.add((provider, o.seq))
                    emit(event="offer", provider=provider, seq=o.seq, created_ms=o.created_at_ms, at_ms=wall_ms(),
                         free_cpu_millis=o.free.cpu_millis)

        nursery.start_soon(feed)
        emit(event="ready", peer_id=key.peer_id)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buffer = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                try:
                    command = json.loads(line)
                except ValueError:
                    continue
                await answer(node, overlay, command)
        nursery.cancel_scope.cancel()


async def answer(node: Any, overlay: BuyerOverlay, command: dict[str, Any]) -> None:
    op = command.get("op")
    if op == "find":
        t0 = time.monotonic()
        found: list[Any] = []
        with trio.move_on_after(FIND_TIMEOUT_S):
            found = await dht.find_providers(node, dht.ANY_COMPUTE)
        emit(event="find", ms=round((time.monotonic() - t0) * 1000, 1), count=len(found))
    elif op == "collect":
        wait_s = float(command.get("wait_s", 3))
        offers: list[Any] = []
        with trio.move_on_after(wait_s + 10):
            offers = await collect_offers(node, overlay.ledger, wait_s=wait_s)
        emit(event="collect", offers=[{"provider": peer_id_from_public(s.record.provider), "seq": s.record.seq,
                                       "free_cpu_millis": s.record.free.cpu_millis} for s in offers])


def main() -> None:
    parser = argparse.ArgumentParser(prog="netlab.cluster_watch")
    parser.add_argument("--bootstrap", action="append", required=True)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    trio.run(watch, tuple(args.bootstrap))


if __name__ == "__main__":
    main()
