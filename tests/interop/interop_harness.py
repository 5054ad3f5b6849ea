"""The Suanli side of the interoperability suite: offers, nodes, and the go node's health check.

Suanli nodes here are built exactly as ``suanli bootstrap`` and a provider build them
(``bootstrap.node.run_bootstrap``; ``p2p.host.open_host`` with the offers topic and
``/suanli/offer/1.0.0``), on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from libp2p.peer.id import ID
from p2pd import ControlBroken, DaemonError, GoNode

from bootstrap.node import Bootstrap, run_bootstrap
from market.offers import ProviderTerms, build_offer
from p2p import dht
from p2p.envelope import Signed, sign_record
from p2p.gossip import OfferLedger, offer_topics
from p2p.host import Node, key_pair_of, open_host
from p2p.identity import NodeKey, b58decode, generate_key
from p2p.market_records import Limits, Offer, Prices, ReceiptTerms
from p2p.offer_query import OFFER_PROTOCOL, offer_handler
from p2p.testing import LOOPBACK, loopback_config

CAPABILITY = "gpu/interop-test-gpu"  # what the Suanli provider announces
GO_CAPABILITY = "gpu/go-provided"  # what the go node provides

TERMS = ProviderTerms(
    prices=Prices(gpu_micros_per_s={}, cpu_core_micros_per_s=3, memory_gib_micros_per_s=1),
    limits=Limits(max_duration_s=3600, max_concurrent_jobs=1, allowed_images=()),
    receipts=ReceiptTerms(interval_ms=5000, countersign_timeout_ms=10_000, grace_ms=10_000,
                          exposure_cap_micros=1_000_000),
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def make_offer(key: NodeKey, addrs: Sequence[str], seq: int) -> Signed[Offer]:
    offer = build_offer(key.public, addrs, TERMS, (), cpu_millis=4000, memory_mib=8192, free_gpu_uuids=(),
                        free_cpu_millis=4000, free_memory_mib=8192, seq=seq, now_ms=wall_ms())
    return sign_record(offer, key)


def cid_of(capability: str) -> bytes:
    """A capability's DHT key as a foreign peer derives it from docs/PROTOCOL.md, independently of
    ``p2p.dht``: the binary CIDv0, i.e. the sha2-256 multihash ``0x12 0x20 || sha256("suanli/cap/" +
    name)``. The scenarios use it for the go node's FIND_PROVIDERS and PROVIDE, so they also check
    that ``p2p.dht.capability_key`` lands on the same bytes."""
    return b"\x12\x20" + hashlib.sha256(("suanli/cap/" + capability).encode()).digest()


@dataclass
class SuanliNode:
    node: Node
    ledger: OfferLedger[Offer]
    offer: Signed[Offer] | None = None

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    def holds_offer_of(self, public: bytes, seq: int | None = None) -> bool:
        signed = self.ledger.latest.get(public)
        return signed is not None and (seq is None or signed.record.seq == seq)

    def in_routing_table(self, peer_id: str) -> bool:
        return bool(self.node.dht.routing_table.peer_in_table(ID.from_base58(peer_id)))


@asynccontextmanager
async def open_suanli_bootstrap(bootstrap: Sequence[str] = ()) -> AsyncIterator[SuanliNode]:
    """What ``suanli bootstrap`` runs: a DHT server and offer relay with no offer of its own.

    A failure inside the block comes out as itself, not wrapped in this nursery's exception group.
    """
    try:
        async with trio.open_nursery() as nursery:
            boot: Bootstrap = await nursery.start(partial(
                run_bootstrap, generate_key(), LOOPBACK, offer_cls=Offer, bootstrap=tuple(bootstrap)))
            try:
                yield SuanliNode(boot.node, boot.ledger)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def open_suanli_node(bootstrap: Sequence[str] = (), *, provider: bool = False) -> AsyncIterator[SuanliNode]:
    """A Suanli node on the offers topic; a provider also answers ``/suanli/offer/1.0.0`` with its
    current signed offer (announced by the test, with ``announce``)."""
    key = generate_key()
    ledger: OfferLedger[Offer] = OfferLedger(Offer)
    current: dict[str, Signed[Offer] | None] = {"offer": None}
    handlers: dict[str, Any] = {OFFER_PROTOCOL: offer_handler(lambda: current["offer"])} if provider else {}
    config = loopback_config(key, bootstrap=tuple(bootstrap), handlers=handlers, topics=offer_topics(ledger))
    async with open_host(config) as node:
        me = SuanliNode(node, ledger)
        if provider:
            me.offer = current["offer"] = make_offer(key, node.addrs(), seq=1)
        yield me


async def provide_capability(me: SuanliNode, name: str = CAPABILITY) -> None:
    """Announce a provider record; the node may have no DHT peer yet right after joining, so retry
    a few times (bounded) until one announcement reached a peer."""
    for _ in range(20):
        if (await dht.provide(me.node, [name])).get(name):
            return
        await trio.sleep(0.25)
    raise AssertionError(f"{me.peer_id} could not announce {name} to any peer")


def pk_record(node: Node) -> tuple[bytes, bytes]:
    """A valid ``/pk/`` DHT record (key, value) for a Suanli node: the one namespace a go DHT accepts on
    /ipfs/kad/1.0.0 besides ipns. Its PUT_VALUE is the request that crashed go after a desync."""
    return b"/pk/" + b58decode(node.peer_id), key_pair_of(node.key).public_key.serialize()


async def assert_go_healthy(go: GoNode, *, providers: dict[str, set[str]], peer: Node) -> None:
    problems = await go_health(go, providers=providers, peer=peer)
    assert not problems, "the go node is not healthy:\n" + "\n".join(problems)


async def go_health(go: GoNode, *, providers: dict[str, set[str]], peer: Node) -> list[str]:
    """Ask the go node what a healthy DHT peer answers; return what was wrong (empty: healthy).

    Checks, in this order (the order matters: a go node whose streams are out of step reads each
    answer as the previous request's): FIND_PROVIDERS for each capability gives exactly the expected
    providers; FIND_PEER of a Suanli node gives its address; PUT_VALUE of a /pk/ record succeeds;
    FIND_PROVIDERS again; the process is still alive.
    """
    problems: list[str] = []
    if not go.alive():
        return [f"go exited with {go.process.returncode} before the check:\n{go.log_tail()}"]

    async def check_providers(round_: int) -> None:
        for name, expected in providers.items():
            got = {f.peer_id for f in await go.client.find_providers(cid_of(name), count=20, timeout_s=10)}
            if got != expected:
                problems.append(f"round {round_}: FIND_PROVIDERS {name}: got {sorted(got)}, "
                                f"expected {sorted(expected)}")

    try:
        with trio.fail_after(45):
            await check_providers(1)
            found = await go.client.find_peer(peer.peer_id, timeout_s=10)
            want = {a.split("/p2p/")[0] for a in peer.addrs()}
            if found.peer_id != peer.peer_id or not want & {a.split("/p2p/")[0] for a in found.addrs}:
                problems.append(f"FIND_PEER {peer.peer_id}: got {found}")
            key, value = pk_record(peer)
            await go.client.put_value(key, value, timeout_s=10)
            await check_providers(2)
    except (ControlBroken, DaemonError) as exc:
        problems.append(f"request failed: {type(exc).__name__}: {exc}")
    except trio.TooSlowError:
        problems.append("the go node did not answer within 45 s")
    with trio.move_on_after(1):  # a panic takes a moment to end the process
        for _ in range(20):
            if not go.alive():
                break
            await trio.sleep(0.05)
    if not go.alive():
        problems.append(f"go exited with {go.process.returncode}:\n{go.log_tail()}")
    return problems
