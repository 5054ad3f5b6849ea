"""Offer gossip and the direct offer query: valid offers reach every node, invalid ones nobody."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

from p2p import dht
from p2p.envelope import Signed, sign_record
from p2p.errors import SignatureError
from p2p.gossip import OFFERS_TOPIC, OfferLedger, offer_topics, publish_offer
from p2p.host import PeerUnreachableError, open_host
from p2p.identity import generate_key
from p2p.offer_query import OFFER_PROTOCOL, collect_offers, fetch_offer, offer_handler
from p2p.records import U64, PublicKey, Record, record
from p2p.testing import loopback_config, open_network, topic_peers, wait_until

NOW = 1_800_000_000_000


@record("test-offer", 1)
@dataclass(frozen=True)
class TOffer(Record):
    provider: PublicKey
    seq: U64
    created_at_ms: U64
    expires_at_ms: U64
    note: str
    SIGNERS = (("provider", "provider"),)


def offer(key, seq, *, created=NOW, ttl=60_000, note="x") -> Signed[TOffer]:
    return sign_record(TOffer(key.public, seq, created, created + ttl, note), key)


def forged_signature(signed: Signed[TOffer]) -> bytes:
    return Signed(signed.body, signed.record, (bytes(64),)).to_bytes()


# --- pure: the ledger's verdicts ----------------------------------------------------------------
P, Q = generate_key(), generate_key()


@pytest.mark.parametrize("data, publisher, verdict", [
    (offer(P, 1).to_bytes(), P.public, "ok"),
    (offer(P, 1).to_bytes(), Q.public, "signer is not the publisher"),
    (forged_signature(offer(P, 1)), P.public, "malformed"),
    (b"\x81\xa1x\x01", P.public, "malformed"),
    (offer(P, 1, created=NOW - 120_000).to_bytes(), P.public, "expired"),
    (offer(P, 1, ttl=16 * 60_000).to_bytes(), P.public, "lives too long"),
    (offer(P, 1, created=NOW + 120_000).to_bytes(), P.public, "created in the future"),
])
def test_verdicts_on_a_fresh_ledger(data, publisher, verdict):
    _, got = OfferLedger(TOffer).judge(data, publisher, NOW)
    assert got.startswith(verdict)


def test_only_a_newer_seq_replaces_and_expired_offers_leave():
    ledger = OfferLedger(TOffer)
    ledger.admit(offer(P, 5), NOW)
    assert ledger.judge(offer(P, 5).to_bytes(), P.public, NOW)[1] == "not newer"
    assert ledger.judge(offer(P, 4, note="replay").to_bytes(), P.public, NOW)[1] == "not newer"
    signed, verdict = ledger.judge(offer(P, 6).to_bytes(), P.public, NOW)
    assert verdict == "ok"
    ledger.admit(signed, NOW)
    assert [s.record.seq for s in ledger.current(NOW)] == [6]
    assert ledger.current(NOW + 60_000) == []
    # once the held offer expired, a restarted provider's seq 1 is accepted again
    assert ledger.judge(offer(P, 1, created=NOW + 61_000).to_bytes(), P.public, NOW + 61_000)[1] == "ok"



def test_an_offer_set_aside_stays_out_until_a_newer_one():
    ledger = OfferLedger(TOffer)
    assert ledger.set_aside(P.public) is False  # nothing held: nothing to set aside
    ledger.admit(offer(P, 5), NOW)
    assert ledger.set_aside(P.public) is True
    assert ledger.current(NOW) == []
    # the same offer arriving again (gossip, a DHT collection) and older ones stay out
    assert ledger.judge(offer(P, 5).to_bytes(), P.public, NOW)[1] == "set aside"
    assert ledger.judge(offer(P, 3).to_bytes(), P.public, NOW)[1] == "set aside"
    # a newer offer is the provider speaking again: admitted, and the mark is gone
    signed, verdict = ledger.judge(offer(P, 6).to_bytes(), P.public, NOW)
    assert verdict == "ok"
    ledger.admit(signed, NOW)
    assert [s.record.seq for s in ledger.current(NOW)] == [6] and ledger.aside == {}
    # a mark lasts no longer than the offer it set aside
    ledger.set_aside(P.public)
    assert ledger.current(NOW + 60_000) == [] and ledger.aside == {}


def test_a_full_ledger_evicts_the_offer_that_expires_soonest_or_refuses_the_newcomer():
    ledger = OfferLedger(TOffer, max_providers=3)
    keys = [generate_key() for _ in range(3)]
    for key, ttl in zip(keys, (3000, 1000, 2000), strict=True):
        assert ledger.admit(offer(key, 1, ttl=ttl), NOW)
    late, new = generate_key(), generate_key()
    assert not ledger.admit(offer(late, 1, ttl=500), NOW)  # expires sooner than anyone held: refused
    assert ledger.admit(offer(new, 1, ttl=5000), NOW)  # evicts the one with 1000 ms left
    assert {s.record.provider for s in ledger.current(NOW)} == {keys[0].public, keys[2].public, new.public}
    for i in range(20):  # a flood never grows it
        ledger.admit(offer(generate_key(), 1, ttl=4000 + i), NOW)
    assert len(ledger.current(NOW)) == 3
    # the newcomer with the longest life is still held, and its newer offer replaces its own even when full
    assert ledger.admit(offer(new, 2, ttl=100), NOW)
    assert [s.record.seq for s in ledger.current(NOW) if s.record.provider == new.public] == [2]

# --- 10 in-process nodes ------------------------------------------------------------------------
async def test_a_fresh_offer_reaches_every_node_and_bad_ones_reach_nobody():
    import time

    wall = time.time_ns() // 1_000_000
    ledgers = [OfferLedger(TOffer) for _ in range(10)]

    def make(i, bootstrap):
        # node 9 is a rogue: no validator of its own, so it publishes whatever it likes
        topics = {OFFERS_TOPIC: None} if i == 9 else offer_topics(ledgers[i])
        return loopback_config(bootstrap=bootstrap, topics=topics, routing_refresh_s=30.0)

    with trio.fail_after(60):
        async with open_network(10, make) as nodes:
            honest, rogue = nodes[:9], nodes[9]
            delivered: dict[str, list[bytes]] = {n.peer_id: [] for n in honest}

            async def drain(node):
                sub = node.subscriptions[OFFERS_TOPIC]
                while True:
                    delivered[node.peer_id].append((await sub.get()).data)

            async with trio.open_nursery() as nursery:
                for n in honest:
                    nursery.start_soon(drain, n)
                await wait_until(lambda: len(topic_peers(nodes[0], OFFERS_TOPIC)) == 9, timeout_s=20)
                await wait_until(lambda: all(topic_peers(n, OFFERS_TOPIC) for n in nodes), timeout_s=20)
                await trio.sleep(1.5)  # a heartbeat or two: meshes form

                p_key, r_key = honest[3].key, rogue.key
                fresh = offer(p_key, 2, created=wall)
                await publish_offer(honest[3], fresh)
                await wait_until(lambda: all(lg.latest.get(p_key.public) for lg in ledgers[:9]), timeout_s=15)

                bad = [
                    fresh.to_bytes(),  # forged: P's offer published by the rogue
                    offer(r_key, 1, created=wall - 120_000).to_bytes(),  # expired
                    forged_signature(offer(r_key, 7, created=wall)),  # wrongly signed
                ]
                good_r = offer(r_key, 5, created=wall)
                replay = offer(r_key, 4, created=wall, note="older")  # older seq after seq 5
                marker = offer(r_key, 6, created=wall, note="marker")
                for data in bad[:2]:
                    await rogue.pubsub.publish(OFFERS_TOPIC, data)
                    await trio.sleep(0.05)
                await rogue.pubsub.publish(OFFERS_TOPIC, good_r.to_bytes())
                await wait_until(lambda: all(lg.latest.get(r_key.public) for lg in ledgers[:9]), timeout_s=15)
                for data in (replay.to_bytes(), bad[2]):
                    await rogue.pubsub.publish(OFFERS_TOPIC, data)
                    await trio.sleep(0.05)
                await rogue.pubsub.publish(OFFERS_TOPIC, marker.to_bytes())
                await wait_until(lambda: all(lg.latest[r_key.public].record.seq == 6 for lg in ledgers[:9]),
                                 timeout_s=15)
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()

    allowed = {fresh.to_bytes(), good_r.to_bytes(), marker.to_bytes()}
    for pid, got in delivered.items():
        assert set(got) == allowed, pid
        assert len(got) == 3, pid  # each once


async def test_direct_offer_query_and_collect_offers_from_the_dht():
    keys = [generate_key() for _ in range(6)]
    import time

    wall = time.time_ns() // 1_000_000
    offers = {k.peer_id: offer(k, 1, created=wall) for k in keys[1:4]}
    liar = offer(keys[1], 1, created=wall)  # node 4 answers with node 1's offer

    def make(i, bootstrap):
        handlers = {}
        if keys[i].peer_id in offers:
            handlers = {OFFER_PROTOCOL: offer_handler(lambda pid=keys[i].peer_id: offers[pid])}
        elif i == 0:  # the bootstrap offers nothing (yet): it answers with no frame
            handlers = {OFFER_PROTOCOL: offer_handler(lambda: None)}
        elif i == 4:
            handlers = {OFFER_PROTOCOL: offer_handler(lambda: liar)}
        mode = "client" if i == 5 else "server"
        return loopback_config(key=keys[i], bootstrap=bootstrap, handlers=handlers, dht_mode=mode)

    with trio.fail_after(60):
        async with open_network(6, make) as nodes:
            buyer = nodes[5]
            got = await fetch_offer(buyer, nodes[1].peer_id, TOffer)
            assert got is not None and got.to_bytes() == offers[nodes[1].peer_id].to_bytes()
            with pytest.raises(SignatureError):
                await fetch_offer(buyer, nodes[4].peer_id, TOffer)
            assert await fetch_offer(buyer, nodes[0].peer_id, TOffer) is None
            async with open_host(loopback_config()) as mute:  # does not speak the protocol
                await buyer.connect(mute.addrs()[0])
                with pytest.raises(PeerUnreachableError):
                    await fetch_offer(buyer, mute.peer_id, TOffer)
            for n in nodes[1:5]:
                await dht.provide(n, ["any"])
            found = await collect_offers(buyer, OfferLedger(TOffer), wait_s=4.0)
            assert {s.to_bytes() for s in found} == {s.to_bytes() for s in offers.values()}
