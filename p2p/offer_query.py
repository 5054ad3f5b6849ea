"""``/suanli/offer/1.0.0``: ask a provider for its current signed offer; and a light client's view.

Wire (docs/PROTOCOL.md, framed per ``p2p.framing``): the asker sends one frame holding the empty
canonical map ``{}`` (reserved for filters) and half-closes; the provider answers with one frame, its
current signed offer envelope, or closes without a frame when it offers nothing now.

Rule 1: an answer counts only if it verifies and its signer is the peer that was asked; it then goes
through the same ``OfferLedger`` checks as gossip (expiry, lifetime, seq).
Rule 2: ``collect_offers`` is how a buyer that just joined fills its book: the gossip it hears during
``wait_s``, plus a direct query to every provider the DHT names for a capability.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import trio
from libp2p.peer.peerinfo import PeerInfo

from p2p import dht
from p2p.envelope import Signed, open_signed
from p2p.errors import RemoteProtocolError, SignatureError
from p2p.framing import FramedStream, serve_framed
from p2p.gossip import OFFERS_TOPIC, OfferLedger, offer_feed, offer_validator, publish_offer, wall_ms
from p2p.host import Node, PeerUnreachableError
from p2p.identity import peer_id_from_public, public_from_peer_id
from p2p.records import Record
from p2p.workarounds import safe_validator

log = logging.getLogger("suanli.p2p.offer_query")

OFFER_PROTOCOL = "/suanli/offer/1.0.0"
MAX_OFFER_FRAME_BYTES = 128 * 1024
SERVE_BUDGET_S = 10.0
FETCH_CONCURRENCY = 16

R = TypeVar("R", bound=Record)


def offer_handler(current: Callable[[], Signed[Any] | None]) -> Callable[[Any], Awaitable[None]]:
    """The provider's stream handler (put it in ``HostConfig.handlers[OFFER_PROTOCOL]``)."""

    async def answer(framed: FramedStream) -> None:
        request = await framed.receive()
        if not isinstance(request, dict):
            raise RemoteProtocolError("offer query is not a map", peer=framed.peer)
        signed = current()
        if signed is not None:
            await framed.send_signed(signed)
        await framed.close_write()

    return serve_framed(answer, protocol=OFFER_PROTOCOL, stream_budget_s=SERVE_BUDGET_S,
                        max_frame_bytes=MAX_OFFER_FRAME_BYTES)


async def fetch_offer(node: Node, peer_id: str, cls: type[R]) -> Signed[R] | None:
    """The provider's current signed offer, or None if it offers nothing (Rule 1).

    Raises PeerUnreachableError, or RemoteProtocolError / SignatureError for a bad answer.
    No timeout here: wrap the call in ``trio.fail_after``.
    """
    stream = await node.open_stream(peer_id, OFFER_PROTOCOL)
    framed = FramedStream(stream, max_frame_bytes=MAX_OFFER_FRAME_BYTES)
    try:
        await framed.send({})
        await framed.close_write()
        payload = await framed.receive_frame()
        if payload is None:
            return None
        try:
            signed = open_signed(payload, cls)
        except RemoteProtocolError as exc:
            raise type(exc)(f"offer from {peer_id}: {exc.message}", peer=peer_id) from exc
        provider: bytes = signed.record.provider  # type: ignore[attr-defined]
        if provider != public_from_peer_id(peer_id):
            raise SignatureError(f"{peer_id} answered with an offer of {peer_id_from_public(provider)}",
                                 peer=peer_id)
        return signed
    finally:
        await framed.aclose()


def ensure_offer_topic(node: Node, ledger: OfferLedger[Any]) -> None:
    """Subscribe to the offers topic now if ``open_host`` did not (a buyer that joined without it)."""
    if OFFERS_TOPIC in node.subscriptions:
        return
    node.pubsub.set_topic_validator(OFFERS_TOPIC, safe_validator(offer_validator(ledger), OFFERS_TOPIC),
                                    is_async_validator=False)


async def announce_offer(node: Node, signed: Signed[Any], capabilities: Iterable[str]) -> None:
    """A provider's announcement: gossip the offer, and (re)provide its capability keys in the DHT."""
    await publish_offer(node, signed)
    await dht.provide(node, capabilities)


async def collect_offers(node: Node, ledger: OfferLedger[R], *, capability: str = dht.ANY_COMPUTE,
                         wait_s: float = 3.0, fetch_timeout_s: float = 5.0,
                         clock: Callable[[], int] = wall_ms) -> list[Signed[R]]:
    """Rule 2: every live offer heard on gossip within ``wait_s`` or fetched from DHT providers.

    The gossip half needs the offers topic in ``HostConfig.topics`` (``p2p.gossip.offer_topics``);
    without it only the DHT half runs. Each provider is queried as soon as the lookup names it. Returns
    when the DHT half is done and found at least one offer, or after ``wait_s`` at the latest.
    """
    if OFFERS_TOPIC not in node.subscriptions:
        ensure_offer_topic(node, ledger)
        node.subscriptions[OFFERS_TOPIC] = await node.pubsub.subscribe(OFFERS_TOPIC)

    async def listen() -> None:
        async for _ in offer_feed(node, ledger):
            pass  # the validator already admitted it into the ledger

    async def fetch_one(peer_id: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                with trio.fail_after(fetch_timeout_s):
                    signed = await fetch_offer(node, peer_id, ledger.cls)
            except (PeerUnreachableError, RemoteProtocolError, trio.TooSlowError) as exc:
                log.info("offer query to %s failed: %s", peer_id, exc or type(exc).__name__)
                return
        if signed is None:
            return
        now = clock()
        checked, verdict = ledger.judge(signed.to_bytes(), public_from_peer_id(peer_id), now)
        if verdict == "ok" and checked is not None:
            ledger.admit(checked, now)

    async def query_dht(outer: trio.Nursery) -> None:
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
        async with trio.open_nursery() as fetches:
            def on_found(info: PeerInfo) -> None:
                pid = info.peer_id.to_base58()
                if pid != node.peer_id:
                    fetches.start_soon(partial(fetch_one, pid, limiter))

            await dht.find_providers(node, capability, on_found=on_found)
        if ledger.current(clock()):
            outer.cancel_scope.cancel()  # the DHT answered: no need to wait out the gossip window

    with trio.move_on_after(wait_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listen)
            nursery.start_soon(query_dht, nursery)
            await trio.sleep_forever()
    return ledger.current(clock())
