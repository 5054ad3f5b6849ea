"""The bootstrap node: joins, relays validated offers, reports status, leaves nothing behind."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio

from bootstrap.node import run_bootstrap
from p2p.envelope import sign_record
from p2p.gossip import OFFERS_TOPIC, OfferLedger, offer_topics, publish_offer
from p2p.host import open_host
from p2p.identity import generate_key
from p2p.records import U64, PublicKey, Record, record
from p2p.testing import count_trio_tasks, loopback_config, port_accepts, tcp_port_of, topic_peers, wait_until


@record("test-boot-offer", 1)
@dataclass(frozen=True)
class BOffer(Record):
    provider: PublicKey
    seq: U64
    created_at_ms: U64
    expires_at_ms: U64
    SIGNERS = (("provider", "provider"),)


async def test_offers_propagate_through_the_bootstrap_and_it_reports_status():
    key = generate_key()
    tasks = count_trio_tasks()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            boot = await nursery.start(lambda task_status: run_bootstrap(
                key, ("/ip4/127.0.0.1/tcp/0",), offer_cls=BOffer, task_status=task_status))
            [addr] = boot.node.addrs()
            assert addr.endswith(f"/p2p/{key.peer_id}")
            ledgers = [OfferLedger(BOffer) for _ in range(4)]
            async with AsyncExitStack() as stack:
                nodes = [await stack.enter_async_context(open_host(loopback_config(
                    bootstrap=(addr,), topics=offer_topics(ledger), routing_refresh_s=60.0)))
                    for ledger in ledgers]
                provider = nodes[0]
                await wait_until(lambda: len(topic_peers(boot.node, OFFERS_TOPIC)) == 4, timeout_s=15)
                await trio.sleep(1.5)  # meshes form on the first heartbeats
                now = time.time_ns() // 1_000_000
                offer = sign_record(BOffer(provider.key.public, 1, now, now + 60_000), provider.key)
                await publish_offer(provider, offer)
                await wait_until(lambda: all(lg.latest.get(provider.key.public) for lg in ledgers),
                                 timeout_s=15)
                status = boot.status()
                assert status["peer_id"] == key.peer_id and status["offers"] == 1
                assert status["inbound_total"] >= 4 and status["connected_peers"] >= 4
                assert status["routing_table"] >= 1
            nursery.cancel_scope.cancel()
    assert not port_accepts(tcp_port_of(addr))
    await wait_until(lambda: count_trio_tasks() == tasks, timeout_s=5)
