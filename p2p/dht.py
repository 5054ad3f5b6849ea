"""Discovery over Kademlia: capability keys, provider records, and routing tables that fill.

Suanli keeps nothing mutable in DHT values (docs/LIBP2P.md item 17: ``get_value`` answers from a stale local
copy). The DHT only says *who* provides a capability; the live offer is fetched from the provider
over ``/suanli/offer/1.0.0`` (``p2p.offer_query``).

Rule 1: a capability key is the base58 CIDv0 text of ``sha256("suanli/cap/" + name)`` as a multihash,
so it is binary-identical to what go-libp2p and js-libp2p use for provider records (issue 7) and is
never mistaken for hex or UTF-8 (item 19).
Rule 2: ``find_providers`` always asks the network and merges with the local store (item 17: the stock
lookup returns as soon as it holds one local record), and returns each provider once.
Rule 3: routing tables are filled on purpose: after joining, every node looks itself up, and it
refreshes periodically in the background; nothing waits on a refresh (item 18).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio
from libp2p.kad_dht.kad_dht import _encode_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2p.identity import b58encode

if TYPE_CHECKING:
    from p2p.host import Node

log = logging.getLogger("suanli.p2p.dht")

CAPABILITY_PREFIX = "suanli/cap/"
ANY_COMPUTE = "any"
ANY_GPU = "gpu/any"
# Per-peer cut-off inside one lookup: a straggler must not hold the whole lookup (item 18).
PEER_QUERY_TIMEOUT_S = 3.0
LOOKUP_ROUNDS = 3
LOOKUP_WIDTH = 20


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def capability_names(gpu_models: Iterable[str] = (), *, cpu_only: bool = False) -> list[str]:
    """The capabilities an offer provides: "any", plus "gpu/any" and "gpu/<model>" per GPU model."""
    names = [ANY_COMPUTE]
    models = sorted({_slug(m) for m in gpu_models})
    if models and not cpu_only:
        names.append(ANY_GPU)
        names += [f"gpu/{m}" for m in models]
    return names


def capability_key(name: str) -> str:
    """Rule 1: the DHT key text of a capability name (e.g. "gpu/nvidia-h200")."""
    digest = hashlib.sha256((CAPABILITY_PREFIX + name).encode()).digest()
    return b58encode(b"\x12\x20" + digest)


def key_bytes(key: str) -> bytes:
    return _encode_key(key)


async def provide(node: Node, names: Iterable[str]) -> dict[str, bool]:
    """Announce provider records for each capability; returns which announcements reached a peer."""
    results: dict[str, bool] = {}

    async def one(name: str) -> None:
        try:
            results[name] = bool(await node.dht.provide(capability_key(name)))
        except Exception as exc:  # py-libp2p's provide path: report, never crash the caller
            log.info("provide %s failed: %r", name, exc)
            results[name] = False

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return results


async def find_providers(node: Node, name: str, *, count: int = 100,
                         on_found: Callable[[PeerInfo], None] | None = None) -> list[PeerInfo]:
    """Rule 2: every provider of a capability the local store and up to 3 lookup rounds know.

    ``on_found`` is called once per provider as soon as it is known, so that a caller can act on the
    first round's answers while later rounds still wait on slow or departed peers.
    """
    dht = node.dht
    kb = key_bytes(capability_key(name))
    found: dict[ID, PeerInfo] = {}

    def add(info: PeerInfo) -> None:
        if info.peer_id not in found:
            found[info.peer_id] = info
            if on_found is not None:
                on_found(info)

    for info in dht.provider_store.get_providers(kb):
        add(info)
    me = node.host.get_id()
    queried: set[ID] = {me}
    candidates = dht.routing_table.find_local_closest_peers(kb, LOOKUP_WIDTH)
    candidates += [p for p in node.host.get_connected_peers() if p not in candidates]

    async def ask(peer: ID, closer: list[ID]) -> None:
        with trio.move_on_after(PEER_QUERY_TIMEOUT_S):
            try:
                providers, more = await dht.provider_store._get_providers_from_peer_with_closers(peer, kb)
            except Exception as exc:  # one peer's failure is not the lookup's
                log.debug("GET_PROVIDERS to %s failed: %r", peer, exc)
                return
            for info in providers:
                if info.addrs and info.peer_id != me:
                    node.replace_addrs(info.peer_id, info.addrs)  # before ``add`` starts a dial (issue 17)
                add(info)
            closer.extend(more)

    for _ in range(LOOKUP_ROUNDS):
        batch = [p for p in dict.fromkeys(candidates) if p not in queried][:LOOKUP_WIDTH]
        if not batch or len(found) >= count:
            break
        queried.update(batch)
        closer: list[ID] = []
        async with trio.open_nursery() as nursery:
            for peer in batch:
                nursery.start_soon(ask, peer, closer)
        candidates = closer
    return list(found.values())[:count]


def routing_table_size(node: Node) -> int:
    return int(node.dht.get_routing_table_size())


async def fill_routing_table(node: Node) -> int:
    """Rule 3: add every connected DHT server, then look ourselves up; returns the table size."""
    dht = node.dht
    for peer in node.host.get_connected_peers():
        await dht.add_peer(peer)  # skipped unless identify showed it serves KAD
    # A self-lookup, not py-libp2p's refresh_routing_table(): that one also looks up a random key
    # per bucket, one after another, each waiting out stragglers (13-40 s, item 18). The peers a
    # self-lookup meets are added here (the lookup itself only records their addresses), and every
    # peer it queries adds us to its own table (an inbound KAD stream counts, item 15).
    try:
        closest = await dht.peer_routing.find_closest_peers_network(node.host.get_id().to_bytes())
    except Exception as exc:  # a failed lookup leaves the table as it was
        log.info("self-lookup failed: %r", exc)
        closest = []
    for peer in closest:
        try:
            addrs = node.host.get_peerstore().addrs(peer)
        except Exception:  # PeerStoreError: forgotten meanwhile
            continue
        if addrs and peer != node.host.get_id():
            await dht.routing_table.add_peer(PeerInfo(peer, addrs))
    return routing_table_size(node)


async def serve_routing_refresh(node: Node, *, interval_s: float = 120.0, refresh_budget_s: float = 30.0,
                                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Fill the routing table right away, then again after 1, 2, 4 ... s up to every ``interval_s``
    (Rule 3): a node that joined early learns of those that joined after it within seconds."""
    task_status.started()
    delay = min(1.0, interval_s)
    while True:
        with trio.move_on_after(refresh_budget_s):
            try:
                size = await fill_routing_table(node)
                log.debug("routing table: %d peers", size)
            except Exception as exc:  # a background loop of open_host must never end the node
                log.warning("routing-table refresh failed: %r", exc)
        await trio.sleep(delay)
        delay = min(delay * 2, interval_s)


async def serve_provider_records(node: Node, names: Callable[[], Iterable[str]], *,
                                 interval_s: float = 600.0, settle_s: float = 10.0,
                                 provide_budget_s: float = 60.0,
                                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Announce ``names()`` now, again ``settle_s`` later, then every ``interval_s``.

    The second round matters: right after joining, the routing table holds a few peers, so the first
    records land on peers that are not the key's closest; once the table has filled (Rule 3) they
    reach the closest ones, which every lookup asks (bench/overlay.py at N=25: without it a node found
    14 of 25 providers). ``interval_s`` is well inside py-libp2p's 48 h record expiry.
    """
    task_status.started()
    delays = [settle_s]
    while True:
        with trio.move_on_after(provide_budget_s):
            try:
                results = await provide(node, list(names()))
                log.debug("provider records: %s", results)
            except Exception as exc:  # the next round tries again
                log.warning("announcing provider records failed: %r", exc)
        await trio.sleep(delays.pop() if delays else interval_s)
