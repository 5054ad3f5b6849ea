"""Offers from the operator's terms and the machine's inventory (pure).

Rule 1: an offer advertises what the machine has (``capacity``) and what is free right now (``free``);
a machine with no GPU offers CPU and memory only, so the market works everywhere.
Rule 2: a new offer (``seq`` + 1) is due when inventory, prices or free capacity change, and before the
current one expires (``needs_refresh``); offers live ``ttl_ms`` and are refreshed at half-life.
Rule 3 (issues 18, 19): an offer names the images the provider holds (32-byte digests: image ids and
registry manifest digests, most recently used first, at most ``MAX_OFFER_IMAGES``; duplicates dropped)
and its availability (``window_end_ms``, ``notice_ms``, ``preemptible``, from node.owner_state). Both are
content (``same_content``): a changed cache or schedule re-announces the offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2p.market_records import MAX_OFFER_IMAGES, Capacity, GpuSpec, Limits, Offer, Prices, ReceiptTerms


@dataclass(frozen=True)
class ProviderTerms:
    """What the operator sets in its config: prices, limits and the receipt terms it accepts."""

    prices: Prices
    limits: Limits
    receipts: ReceiptTerms
    ttl_ms: int = 120_000


@dataclass(frozen=True)
class OfferedGpu:
    uuid: str  # used for allocation (DeviceRequest by UUID); never published
    spec: GpuSpec


def build_offer(provider: bytes, addrs: Sequence[str], terms: ProviderTerms, gpus: Sequence[OfferedGpu],
                cpu_millis: int, memory_mib: int, free_gpu_uuids: Sequence[str], free_cpu_millis: int,
                free_memory_mib: int, seq: int, now_ms: int, *, disk_mib: int = 0, free_disk_mib: int = 0,
                images: Sequence[bytes] = (), window_end_ms: int = 0, notice_ms: int = 0,
                preemptible: bool = False) -> Offer:
    free_set = set(free_gpu_uuids)
    held = tuple(dict.fromkeys(images))[:MAX_OFFER_IMAGES]  # Rule 3: the first (most recent) of each kept
    return Offer(
        provider=provider, addrs=tuple(addrs)[:16], seq=seq, created_at_ms=now_ms,
        expires_at_ms=now_ms + terms.ttl_ms,
        capacity=Capacity(gpus=tuple(g.spec for g in gpus), cpu_millis=cpu_millis, memory_mib=memory_mib,
                          disk_mib=disk_mib),
        free=Capacity(gpus=tuple(g.spec for g in gpus if g.uuid in free_set), cpu_millis=max(0, free_cpu_millis),
                      memory_mib=max(0, free_memory_mib), disk_mib=max(0, free_disk_mib)),
        prices=terms.prices, limits=terms.limits, terms=terms.receipts, images=held,
        window_end_ms=max(0, window_end_ms), notice_ms=max(0, notice_ms), preemptible=preemptible)


def same_content(a: Offer, b: Offer) -> bool:
    """True when two offers differ only in seq and timestamps (no need to re-announce; Rule 3: the images
    held and the availability are content)."""
    return _content(a) == _content(b)


def _content(o: Offer) -> tuple[object, ...]:
    return (o.addrs, o.capacity, o.free, o.prices, o.limits, o.terms, o.images, o.window_end_ms, o.notice_ms,
            o.preemptible)


def needs_refresh(current: Offer | None, candidate: Offer, now_ms: int) -> bool:
    """Rule 2: publish ``candidate`` when something changed or ``current`` is past its half-life."""
    if current is None or not same_content(current, candidate):
        return True
    half_life = (current.expires_at_ms - current.created_at_ms) // 2
    return now_ms >= current.created_at_ms + half_life
