"""Issue 7: a go-libp2p node (p2pd, go-libp2p v0.32.1, kad-dht v0.25.1, pubsub v0.10.0) joins Suanli.

Each scenario runs against a real go process on 127.0.0.1, in both dial directions where the
direction is a choice: ``go-dials`` (the go node connects to the Suanli nodes) and ``suanli-dials``
(the Suanli nodes are configured with the go node as a bootstrap peer). No go process may die: every
scenario ends with ``go_health``, which also catches a go node whose DHT streams went out of step.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import msgpack
import pytest
import trio
from interop_harness import (
    CAPABILITY,
    GO_CAPABILITY,
    SuanliNode,
    assert_go_healthy,
    cid_of,
    go_health,
    make_offer,
    open_suanli_bootstrap,
    open_suanli_node,
    provide_capability,
)
from libp2p.peer.id import ID
from nacl.signing import VerifyKey
from p2pd import GoNode, open_p2pd
from p2pd_pb import decode_uvarint

from p2p import dht, workarounds
from p2p.codec import pack
from p2p.envelope import Signed, domain, open_signed
from p2p.framing import encode_frame
from p2p.gossip import OFFERS_TOPIC, publish_offer
from p2p.identity import generate_key, public_from_peer_id
from p2p.market_records import Offer
from p2p.offer_query import MAX_OFFER_FRAME_BYTES, OFFER_PROTOCOL, fetch_offer
from p2p.testing import topic_peers, wait_until

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("p2pd_binary")]

DIRECTIONS = ["go-dials", "suanli-dials"]
SCENARIO_BUDGET_S = 90  # generous: 2 shared cores; a healthy run takes a few seconds


async def open_mixed(stack: AsyncExitStack, direction: str, *, go_key=None,
                     ) -> tuple[GoNode, SuanliNode, SuanliNode, SuanliNode]:
    """A go node G and three Suanli nodes: bootstrap B, provider P, buyer S, all connected to G.

    go-dials: B, P and S form a network, then G bootstraps from B and connects to P and S.
    suanli-dials: G starts alone; B, P and S each bootstrap from G (P and S from B too).
    P has announced CAPABILITY before the scenario starts.
    """
    if direction == "go-dials":
        b = await stack.enter_async_context(open_suanli_bootstrap())
        boot = (b.node.addrs()[0],)
        p = await stack.enter_async_context(open_suanli_node(boot, provider=True))
        s = await stack.enter_async_context(open_suanli_node(boot))
        await provide_capability(p)
        go = await stack.enter_async_context(open_p2pd(key=go_key, bootstrap=boot))
        for peer in (p, s):
            await go.client.connect(peer.peer_id, peer.node.addrs())
    else:
        go = await stack.enter_async_context(open_p2pd(key=go_key))
        b = await stack.enter_async_context(open_suanli_bootstrap((go.addr,)))
        boot = (go.addr, b.node.addrs()[0])
        p = await stack.enter_async_context(open_suanli_node(boot, provider=True))
        s = await stack.enter_async_context(open_suanli_node(boot))
        await provide_capability(p)
    connected = {f.peer_id for f in await go.client.list_peers()}
    assert {b.peer_id, p.peer_id, s.peer_id} <= connected, "the go node is not connected to every Suanli node"
    return go, b, p, s


async def go_sees_topic_peers(go: GoNode, peers: set[str], timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        for _ in range(int(timeout_s * 10)):
            if not peers - set(await go.client.topic_peers(OFFERS_TOPIC)):
                return
            await trio.sleep(0.1)
    raise AssertionError(f"the go node never saw {peers} subscribed to {OFFERS_TOPIC}")


# --- 1. a go node bootstraps from `suanli bootstrap` ----------------------------------------------
async def test_go_node_bootstraps_from_suanli_and_finds_providers_by_capability():
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            b = await stack.enter_async_context(open_suanli_bootstrap())
            p = await stack.enter_async_context(open_suanli_node((b.node.addrs()[0],), provider=True))
            await provide_capability(p)
            go = await stack.enter_async_context(open_p2pd(bootstrap=(b.node.addrs()[0],)))

            # it lands in the routing tables: the bootstrap's, and (through its own lookups) the provider's
            await wait_until(lambda: b.in_routing_table(go.peer_id) and p.in_routing_table(go.peer_id),
                             timeout_s=30)
            # it finds the provider by capability key (derived as a foreign peer would), with an
            # address it can dial
            assert dht.key_bytes(dht.capability_key(CAPABILITY)) == cid_of(CAPABILITY)
            found = await go.client.find_providers(cid_of(CAPABILITY), count=20, timeout_s=10)
            assert [f.peer_id for f in found] == [p.peer_id]
            assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in found[0].addrs)
            # and it keeps working: it provides (its ADD_PROVIDER reaches Suanli servers), then every
            # later request is answered correctly and the process lives
            await go.client.provide(cid_of(GO_CAPABILITY), timeout_s=10)
            await assert_go_healthy(go, providers={CAPABILITY: {p.peer_id}, GO_CAPABILITY: {go.peer_id}},
                                   peer=b.node)


# --- 2. a go node provides a key; Suanli nodes find it ---------------------------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_go_node_provides_and_every_suanli_node_finds_it(direction):
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            go, b, p, s = await open_mixed(stack, direction)
            await go.client.provide(cid_of(GO_CAPABILITY), timeout_s=10)
            for node in (b, p, s):
                found = await dht.find_providers(node.node, GO_CAPABILITY)
                assert [i.peer_id.to_base58() for i in found] == [go.peer_id], node.peer_id
            await assert_go_healthy(go, providers={CAPABILITY: {p.peer_id}, GO_CAPABILITY: {go.peer_id}},
                                   peer=p.node)


# --- 3. offers over GossipSub -------------------------------------------------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_go_node_receives_signed_offers_and_its_forged_offer_is_dropped_everywhere(direction):
    go_key = generate_key()  # the go node runs with this identity (-id), so it can sign offers too
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            go, b, p, s = await open_mixed(stack, direction, go_key=go_key)
            suanli = (b, p, s)
            go_id = ID.from_base58(go.peer_id)
            # The go node learns every Suanli node's subscription first, so that joining the topic puts
            # them all in its mesh at once (GossipSub JOIN); its own messages then reach each of them
            # directly, not only through a Suanli relay (which would not forward an invalid one).
            await go_sees_topic_peers(go, {n.peer_id for n in suanli})
            async with go.client.subscribe(OFFERS_TOPIC) as messages:
                await wait_until(lambda: all(go_id in n.node.router.mesh.get(OFFERS_TOPIC, set()) for n in suanli),
                                 timeout_s=20)

                # the provider's signed offer reaches the go node, intact and verifiable
                await publish_offer(p.node, p.offer)
                with trio.fail_after(15):
                    async for msg in messages:
                        if msg.data == p.offer.to_bytes():
                            break
                    else:
                        raise AssertionError(f"the go node's subscription ended:\n{go.log_tail()}")
                signed = open_signed(msg.data, Offer)
                assert signed.record.provider == public_from_peer_id(p.peer_id)
                assert ID(msg.from_id).to_base58() == p.peer_id
                assert msg.topics == (OFFERS_TOPIC,)

                # the go node publishes an offer whose (inner) signature is not its own: a correctly
                # signed GossipSub message, so only the offer validator can refuse it
                honest = make_offer(go_key, go.addrs, seq=1)
                forged = Signed(honest.body, honest.record, (generate_key().sign(honest.body),))
                await go.client.publish(OFFERS_TOPIC, forged.to_bytes())
                await wait_until(lambda: all(n.ledger.strikes.get(go.peer_id, 0) >= 1 for n in suanli),
                                 timeout_s=15)
                assert not any(n.holds_offer_of(go_key.public) for n in suanli)
                # the same channel carries the go node's honest offer to every Suanli node
                await go.client.publish(OFFERS_TOPIC, honest.to_bytes())
                await wait_until(lambda: all(n.holds_offer_of(go_key.public, seq=1) for n in suanli),
                                 timeout_s=15)
            await assert_go_healthy(go, providers={CAPABILITY: {p.peer_id}}, peer=p.node)


# --- 4. a go node asks a provider for its offer over /suanli/offer/1.0.0 ----------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
async def test_go_node_fetches_a_providers_signed_offer(direction):
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            go, b, p, s = await open_mixed(stack, direction)
            for _ in range(2):  # twice: a stream after a stream on the same connection
                stream = await go.client.open_stream(p.peer_id, [OFFER_PROTOCOL])
                try:
                    assert stream.protocol == OFFER_PROTOCOL
                    await stream.send_all(encode_frame(pack({})))  # the query: one frame, the empty map
                    with trio.fail_after(10):
                        answer = await stream.receive_until_eof(MAX_OFFER_FRAME_BYTES + 8)
                finally:
                    await stream.aclose()
                length, start = decode_uvarint(answer, 0)
                assert len(answer) == start + length, "exactly one frame, then the provider closes"
                payload = answer[start:]
                assert payload == p.offer.to_bytes()
                # verified twice: by the envelope code, and independently with libsodium over
                # domain || body (docs/PROTOCOL.md: "suanli/offer/2/provider")
                signed = open_signed(payload, Offer)
                assert signed.record.provider == public_from_peer_id(p.peer_id)
                envelope = msgpack.unpackb(payload, raw=False)
                VerifyKey(public_from_peer_id(p.peer_id)).verify(
                    b"suanli/offer/2/provider" + envelope["body"], envelope["sigs"][0])
                assert domain(Offer, "provider") == b"suanli/offer/2/provider"
            await assert_go_healthy(go, providers={CAPABILITY: {p.peer_id}}, peer=p.node)


# --- 5. a Suanli node bootstraps from a go node ---------------------------------------------------
async def test_suanli_nodes_bootstrap_from_a_go_node_and_the_network_forms():
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            go = await stack.enter_async_context(open_p2pd())
            await stack.enter_async_context(go.client.subscribe(OFFERS_TOPIC))  # the go node relays offers
            p = await stack.enter_async_context(open_suanli_node((go.addr,), provider=True))
            assert p.node.connected_peers() == [go.peer_id]
            await provide_capability(p)  # its only DHT peer is the go node
            s = await stack.enter_async_context(open_suanli_node((go.addr,)))

            # discovery through the go node's DHT: S finds P by capability, and P lands in S's table
            async def s_finds_p() -> bool:
                return [i.peer_id.to_base58() for i in await dht.find_providers(s.node, CAPABILITY)] == [p.peer_id]

            with trio.fail_after(30):
                for _ in range(120):
                    if await s_finds_p():
                        break
                    await trio.sleep(0.25)
                else:
                    raise AssertionError("S never found P through the go node")
            await wait_until(lambda: s.in_routing_table(p.peer_id) and p.in_routing_table(s.peer_id),
                             timeout_s=30)
            # offers: gossip reaches S, and S fetches P's offer directly (dialing the address it found)
            await wait_until(lambda: p.peer_id in topic_peers(s.node, OFFERS_TOPIC) or
                             go.peer_id in topic_peers(s.node, OFFERS_TOPIC), timeout_s=20)
            await wait_until(lambda: bool(p.node.router.mesh.get(OFFERS_TOPIC)), timeout_s=20)
            await publish_offer(p.node, p.offer)
            await wait_until(lambda: s.holds_offer_of(p.offer.record.provider, seq=1), timeout_s=20)
            with trio.fail_after(15):
                fetched = await fetch_offer(s.node, p.peer_id, Offer)
            assert fetched is not None and fetched.to_bytes() == p.offer.to_bytes()
            await assert_go_healthy(go, providers={CAPABILITY: {p.peer_id}}, peer=s.node)


# --- the ADD_PROVIDER workaround (p2p.workarounds.silence_add_provider_echo) ---------------------
@pytest.mark.parametrize("workaround", ["with", "without"])
async def test_add_provider_workaround_keeps_a_providing_go_node_in_step(workaround, monkeypatch):
    """``with``: the regression test; it fails if the workaround is removed or not applied by
    ``open_host``. ``without``: Suanli hosts built without it (the stock py-libp2p KAD handler, which
    answers ADD_PROVIDER) put the go node's request stream one answer behind and crash it at its next
    PUT_VALUE, which shows the check above can see the defect. If ``without`` starts failing,
    go-libp2p-kad-dht or py-libp2p changed and the workaround may no longer be needed."""
    if workaround == "without":
        monkeypatch.setattr(workarounds, "silence_add_provider_echo", lambda host, dht_: None, raising=False)
    with trio.fail_after(SCENARIO_BUDGET_S):
        async with AsyncExitStack() as stack:
            go, b, p, s = await open_mixed(stack, "go-dials")
            await go.client.provide(cid_of(GO_CAPABILITY), timeout_s=10)  # ADD_PROVIDER to b, p and s
            problems = await go_health(go, providers={CAPABILITY: {p.peer_id}, GO_CAPABILITY: {go.peer_id}},
                                       peer=p.node)
            if workaround == "with":
                assert not problems, "the go node is not healthy:\n" + "\n".join(problems)
            else:
                # Out of step: answers are the previous request's (FIND_PROVIDERS comes back empty or
                # wrong), and usually the next PUT_VALUE reads a reply without a record and go panics
                # (nil pointer dereference in ProtocolMessenger.PutValue); either suffices here.
                assert problems, "a go node stayed in step with Suanli hosts that answer ADD_PROVIDER"
                assert any("FIND_PROVIDERS" in line for line in problems) or (
                    not go.alive() and "nil pointer dereference" in go.log_tail()), problems
