"""The offers topic: signed offers gossiped over GossipSub, checked by every node before delivery.

p2p does not know what an offer contains (that is ``p2p.market_records.Offer``); it knows the four fields
every gossiped record must have: ``provider`` (32-byte Ed25519 public key, the signer), ``seq``,
``created_at_ms`` and ``expires_at_ms``. The record class is passed in.

Rule 1 (validator, synchronous: docs/LIBP2P.md item 12): a message is delivered and forwarded only if its
data is one signed envelope of the record class whose signature verifies (over the bytes that
arrived), whose signer is the peer that published the message, that has not expired, that claims no
more than ``max_ttl_ms`` of life, was not created in the future beyond ``max_skew_ms``, and whose
``seq`` is newer than the one this node holds for that provider.
Rule 2: a forwarder of messages no honest node forwards (undecodable, bad signature, signer not the
publisher) is blacklisted after ``MAX_STRIKES`` of them; stale or expired offers are not strikes (an
honest relay may hold an older view).
Rule 3: gossip only what is rare: a provider publishes on change and before expiry, never per second.
Rule 4: a buyer that could not reach a provider sets its offer aside: that offer and older ones are
refused, whichever way they arrive again (gossip, a DHT collection), until the provider publishes a
newer one, which a live provider does at least every half-life of its offers (node.provider).
Rule 5: a ledger holds at most ``max_providers`` offers. When full, a new provider's offer evicts the
held offer that expires soonest if that one expires before the newcomer, else the newcomer is refused:
a flood of offers cannot pin itself in place of the offers that will still be live.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from libp2p.peer.id import ID

from p2p.clock import wall_ms  # where callers have found it
from p2p.envelope import Signed, open_signed
from p2p.errors import RemoteProtocolError
from p2p.identity import peer_id_from_public, public_from_peer_id
from p2p.records import Record

log = logging.getLogger("suanli.p2p.gossip")

OFFERS_TOPIC = "/suanli/offers/1.0.0"
MAX_STRIKES = 5


class GossipedRecord(Protocol):
    provider: bytes
    seq: int
    created_at_ms: int
    expires_at_ms: int


R = TypeVar("R", bound=Record)


@dataclass
class OfferLedger(Generic[R]):
    """The newest valid offer per provider this node has seen (pure: ``now_ms`` is passed in)."""

    cls: type[R]
    max_ttl_ms: int = 15 * 60 * 1000
    max_skew_ms: int = 60 * 1000
    max_providers: int = 10_000
    latest: dict[bytes, Signed[R]] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)
    aside: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # Rule 4: provider -> (seq, expires_at_ms)
    # Called with a forwarder that reached MAX_STRIKES; ``watch_offers`` sets it to blacklist.
    on_strikeout: Callable[[ID], None] | None = None

    def judge(self, data: bytes, publisher: bytes, now_ms: int) -> tuple[Signed[R] | None, str]:
        """(the signed offer, "ok") if ``data`` may be delivered, else (None or the offer, reason)."""
        try:
            signed = open_signed(data, self.cls)
        except RemoteProtocolError as exc:
            return None, f"malformed: {exc}"
        rec: Any = signed.record
        if rec.provider != publisher:
            return None, "signer is not the publisher"
        if rec.expires_at_ms <= now_ms:
            return signed, "expired"
        if rec.expires_at_ms - rec.created_at_ms > self.max_ttl_ms:
            return signed, "lives too long"
        if rec.created_at_ms > now_ms + self.max_skew_ms:
            return signed, "created in the future"
        held = self.latest.get(rec.provider)
        if held is not None and held.record.seq >= rec.seq and held.record.expires_at_ms > now_ms:  # type: ignore[attr-defined]
            return signed, "not newer"
        aside = self.aside.get(rec.provider)
        if aside is not None and rec.seq <= aside[0]:
            return signed, "set aside"
        return signed, "ok"

    def admit(self, signed: Signed[R], now_ms: int) -> bool:
        """Hold ``signed`` (judged "ok"); False when the ledger is full and it was refused (Rule 5)."""
        rec: Any = signed.record
        if rec.provider not in self.latest and len(self.latest) >= self.max_providers:
            self.expire(now_ms)
            if len(self.latest) >= self.max_providers:
                soonest = min(self.latest.values(), key=lambda s: s.record.expires_at_ms)  # type: ignore[attr-defined]
                if soonest.record.expires_at_ms >= rec.expires_at_ms:  # type: ignore[attr-defined]
                    return False
                del self.latest[soonest.record.provider]  # type: ignore[attr-defined]
        self.latest[rec.provider] = signed
        self.aside.pop(rec.provider, None)
        return True

    def expire(self, now_ms: int) -> list[bytes]:
        gone = [p for p, s in self.latest.items() if s.record.expires_at_ms <= now_ms]  # type: ignore[attr-defined]
        for p in gone:
            del self.latest[p]
        for p in [p for p, (_, expires) in self.aside.items() if expires <= now_ms]:
            del self.aside[p]  # what was set aside has expired: refused as expired from now on
        return gone

    def set_aside(self, provider: bytes) -> bool:
        """Rule 4: forget ``provider``'s offer and refuse it until a newer one; False if none was held."""
        held = self.latest.pop(provider, None)
        if held is None:
            return False
        rec: Any = held.record
        self.aside[provider] = (rec.seq, rec.expires_at_ms)
        return True

    def current(self, now_ms: int) -> list[Signed[R]]:
        self.expire(now_ms)
        return list(self.latest.values())

    def strike(self, forwarder: str) -> int:
        self.strikes[forwarder] = self.strikes.get(forwarder, 0) + 1
        return self.strikes[forwarder]


def offer_validator(ledger: OfferLedger[Any], *,
                    clock: Callable[[], int] = wall_ms) -> Callable[[ID, Any], bool]:
    """The sync topic validator of Rule 1 (give it to ``HostConfig.topics[OFFERS_TOPIC]``)."""

    def validate(forwarder: ID, msg: Any) -> bool:
        try:
            publisher = public_from_peer_id(ID(msg.from_id).to_base58())
        except ValueError:
            publisher = b""  # not an Ed25519 peer id: cannot have signed an offer
        now = clock()
        signed, verdict = ledger.judge(msg.data, publisher, now)
        if verdict == "ok" and signed is not None:
            ledger.admit(signed, now)
            return True
        fwd = forwarder.to_base58()
        if signed is None:  # Rule 2: only what no honest node forwards is a strike
            strikes = ledger.strike(fwd)
            log.info("offer from %s via %s refused: %s (strike %d)", ID(msg.from_id), fwd, verdict, strikes)
            if strikes == MAX_STRIKES and ledger.on_strikeout is not None:
                ledger.on_strikeout(forwarder)
        else:
            log.debug("offer seq %d of %s refused: %s", signed.record.seq,  # type: ignore[attr-defined]
                      peer_id_from_public(signed.record.provider), verdict)  # type: ignore[attr-defined]
        return False

    return validate


def offer_topics(ledger: OfferLedger[Any], *, clock: Callable[[], int] = wall_ms) -> dict[str, Any]:
    """``HostConfig.topics`` entry for the offers topic."""
    return {OFFERS_TOPIC: offer_validator(ledger, clock=clock)}


async def publish_offer(node: Any, signed: Signed[Any]) -> None:
    """Gossip one signed offer (Rule 3: on change and before expiry only)."""
    await node.pubsub.publish(OFFERS_TOPIC, signed.to_bytes())


async def offer_feed(node: Any, ledger: OfferLedger[R]) -> AsyncIterator[Signed[R]]:
    """Each offer delivered on the topic, as the validator admitted it; runs until cancelled.

    Also makes the node blacklist forwarders that strike out (Rule 2). Draining the subscription
    is required: its queue is bounded (workarounds, item 11).
    """
    ledger.on_strikeout = node.pubsub.add_to_blacklist
    sub = node.subscriptions[OFFERS_TOPIC]
    while True:
        msg = await sub.get()
        signed = ledger.latest.get(_provider_of(msg))
        if signed is not None and signed.to_bytes() == msg.data:
            yield signed


def _provider_of(msg: Any) -> bytes:
    try:
        return public_from_peer_id(ID(msg.from_id).to_base58())
    except ValueError:
        return b""
