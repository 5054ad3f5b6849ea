"""Regression tests for p2p.workarounds.pubsub: GossipSub defaults and the validation cache (items 8, 9,
11, 14; split from test_workarounds.py; each fails if its workaround is removed)."""

from __future__ import annotations

import trio
import trio.lowlevel
from libp2p.peer.id import ID

from p2p.host import open_host
from p2p.testing import (
    loopback_config,
    topic_peers,
    wait_until,
)

TOPIC = "/suanli/test/1"


# items 8, 9, 11, 14: GossipSub defaults -------------------------------------------------------
async def test_gossip_defaults_are_fixed():
    async with open_host(loopback_config(topics={TOPIC: None})) as a:
        assert a.router.adaptive_gossip_enabled is False  # item 9
        assert a.router.heartbeat_interval == 1
        assert a.router.spam_protection_enabled is False  # item 8


async def test_a_burst_from_one_publisher_is_delivered_in_full():
    # item 8: spam protection silently drops a publisher's messages beyond 10 msg/s.
    async with open_host(loopback_config(topics={TOPIC: None})) as a:
        async with open_host(loopback_config(topics={TOPIC: None}, bootstrap=(a.addrs()[0],))) as b:
            await wait_until(lambda: a.peer_id in topic_peers(b, TOPIC), timeout_s=10)
            got = []

            async def drain():
                while len(got) < 30:
                    got.append((await b.subscriptions[TOPIC].get()).data)

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain)
                    for i in range(30):  # 25 msg/s, above the stock 10 msg/s cap
                        await a.pubsub.publish(TOPIC, b"burst %d" % i)
                        await trio.sleep(0.04)
            assert sorted(got) == sorted(b"burst %d" % i for i in range(30))


async def test_a_busy_subscriber_loses_nothing_up_to_1024_queued_messages():
    # item 11: the stock subscription queue keeps 32 messages and drops the rest.
    async with open_host(loopback_config(topics={TOPIC: None})) as a:
        async with open_host(loopback_config(topics={TOPIC: None}, bootstrap=(a.addrs()[0],))) as b:
            await wait_until(lambda: a.peer_id in topic_peers(b, TOPIC), timeout_s=10)
            for i in range(100):
                await a.pubsub.publish(TOPIC, b"queued %d" % i)
                # A publisher must yield now and then: the per-peer outbound RPC queue (32, as in
                # go-libp2p-pubsub) rejects what a tight loop outruns.
                await trio.sleep(0.005)
            got = []
            with trio.fail_after(20):
                while len(got) < 100:
                    got.append((await b.subscriptions[TOPIC].get()).data)
            assert len(set(got)) == 100


async def test_the_same_payload_published_twice_is_delivered_once():
    # item 14: the default message id is from+seqno, so a republished offer is a new message.
    async with open_host(loopback_config(topics={TOPIC: None})) as a:
        async with open_host(loopback_config(topics={TOPIC: None}, bootstrap=(a.addrs()[0],))) as b:
            await wait_until(lambda: a.peer_id in topic_peers(b, TOPIC), timeout_s=10)
            await a.pubsub.publish(TOPIC, b"same offer")
            await a.pubsub.publish(TOPIC, b"same offer")
            await a.pubsub.publish(TOPIC, b"end")
            got = []
            with trio.fail_after(10):
                while not got or got[-1] != b"end":
                    got.append((await b.subscriptions[TOPIC].get()).data)
            assert got == [b"same offer", b"end"]


def _owner_validator(forwarder, msg) -> bool:
    # The payload names its owner; only the owner may publish it (like an offer's provider).
    return msg.data.split(b"|")[0] == ID(msg.from_id).to_base58().encode()


async def test_a_copy_published_by_someone_else_cannot_censor_the_owner():
    # Validation-cache poisoning (found here): C (no validator: a rogue node) publishes A's payload
    # first and is rejected by B; that verdict must not be cached against A's own copy.
    topics = {TOPIC: _owner_validator}
    async with open_host(loopback_config(topics=topics)) as a:
        boot = (a.addrs()[0],)
        async with open_host(loopback_config(topics=topics, bootstrap=boot)) as b, \
                open_host(loopback_config(topics={TOPIC: None}, bootstrap=(b.addrs()[0],))) as c:
            await wait_until(lambda: {a.peer_id, c.peer_id} <= topic_peers(b, TOPIC), timeout_s=10)
            payload = a.peer_id.encode() + b"|offer"
            await c.pubsub.publish(TOPIC, payload)  # rejected by b (signer != owner)
            await trio.sleep(0.3)
            await a.pubsub.publish(TOPIC, payload)
            with trio.fail_after(10):
                msg = await b.subscriptions[TOPIC].get()
            assert msg.data == payload and ID(msg.from_id).to_base58() == a.peer_id
