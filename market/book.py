"""The order book (pure): the offers a node currently believes, bounded and expiring.

Rule 1: one live offer per provider: a newer ``seq`` replaces it, an older or equal one is stale.
Rule 2: an offer is dropped when ``now`` reaches its ``expires_at_ms``; an offer that claims to live
longer than ``max_ttl_ms`` is refused (a flood cannot pin itself in the book).
Rule 3: at most ``max_total`` offers: when full, a new provider's offer evicts the offer that expires
soonest, if that one expires before the newcomer; otherwise the newcomer is refused.
Signatures are checked before anything reaches the book (p2p.envelope); the book trusts its input.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from market.records import Offer
from p2p.envelope import Signed


class Outcome(StrEnum):
    added = "added"
    replaced = "replaced"
    stale = "stale"
    expired = "expired"
    too_long = "too_long"
    full = "full"

    @property
    def accepted(self) -> bool:
        return self in (Outcome.added, Outcome.replaced)


@dataclass
class OrderBook:
    max_total: int = 10_000
    max_ttl_ms: int = 15 * 60 * 1000
    _by_provider: dict[bytes, Signed[Offer]] = field(default_factory=dict)
    _expiry: list[tuple[int, bytes, int]] = field(default_factory=list)  # (expires_at, provider, seq), lazy

    def __len__(self) -> int:
        return len(self._by_provider)

    def __iter__(self) -> Iterator[Offer]:
        return (s.record for s in self._by_provider.values())

    def signed(self, provider: bytes) -> Signed[Offer] | None:
        return self._by_provider.get(provider)

    def insert(self, signed: Signed[Offer], now_ms: int) -> Outcome:
        offer = signed.record
        if offer.expires_at_ms <= now_ms:
            return Outcome.expired
        if offer.expires_at_ms - now_ms > self.max_ttl_ms:
            return Outcome.too_long
        current = self._by_provider.get(offer.provider)
        if current is not None:
            if offer.seq <= current.record.seq:
                return Outcome.stale
            self._by_provider[offer.provider] = signed
            heapq.heappush(self._expiry, (offer.expires_at_ms, offer.provider, offer.seq))
            return Outcome.replaced
        self.expire(now_ms)
        if len(self._by_provider) >= self.max_total:
            soonest = self._peek_live()
            if soonest is None or soonest[0] >= offer.expires_at_ms:
                return Outcome.full
            del self._by_provider[soonest[1]]
            heapq.heappop(self._expiry)
        self._by_provider[offer.provider] = signed
        heapq.heappush(self._expiry, (offer.expires_at_ms, offer.provider, offer.seq))
        return Outcome.added

    def _peek_live(self) -> tuple[int, bytes, int] | None:
        while self._expiry:
            expires, provider, seq = self._expiry[0]
            current = self._by_provider.get(provider)
            if current is not None and current.record.seq == seq:
                return self._expiry[0]
            heapq.heappop(self._expiry)  # an entry for a replaced or removed offer
        return None

    def expire(self, now_ms: int) -> list[bytes]:
        """Drop every offer whose time has come; returns the providers dropped."""
        dropped = []
        while (head := self._peek_live()) is not None and head[0] <= now_ms:
            heapq.heappop(self._expiry)
            del self._by_provider[head[1]]
            dropped.append(head[1])
        return dropped

    def remove(self, provider: bytes) -> None:
        self._by_provider.pop(provider, None)
