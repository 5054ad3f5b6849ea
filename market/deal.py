"""The provider's answer to a proposal (pure): reject, counter, or a firm bid with capacity held.

Rule 1: a proposal is judged against the offer it names, if that offer is still live (the buyer may
hold an offer one refresh old), and against the capacity free *now* (the ledger).
Rule 2: a firm bid reserves its resources in the same step, so racing buyers can never be promised the
same GPU; the hold lasts until ``accept_by_ms`` and is released if the buyer never countersigns.
Rule 3: when the only problem is price, the answer is a counter with the provider's price.
Rule 4: a deal is refused when the agreed exposure cap is below ``MIN_CAP_INTERVALS`` receipt
intervals at its price: the exposure guard (settlement.session) would pause it at once.
Rule 5 (issue 13 M3): a buyer holds at most ``MAX_UNSTARTED_PER_BUYER`` bids and agreements whose job
has not started (``unstarted``, counted by the caller); beyond that its proposals are refused with
``unstarted_agreements`` before any capacity is looked at. An agreement not started in time is closed
by the provider (node.provider), which frees its capacity and this count.
Rule 6 (issue 14, item 2): pausing sales is one switch. While the provider is not ``accepting`` (its
shutdown grace), every proposal is refused with ``busy``, whichever offer it names: emptying the next
offer is not enough, since a buyer may hold an earlier one that has not expired (Rule 1).
Rule 7 (issue 18): an offer whose owner's selling window ends (``window_end_ms``) agrees a job only up to
that end, unless the buyer ``accepts_preemption``: the agreement's ``max_duration_ms`` is cut to what is
left of the window, and a proposal with less than ``MIN_WINDOW_MS`` left is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from market.capacity import Allocation, CapacityLedger
from market.matching import gpu_fits
from market.negotiation import (
    BUSY,
    DURATION_TOO_LONG,
    EXPIRED_OFFER,
    NO_CAPACITY,
    PRICE_TOO_LOW,
    TERMS_UNACCEPTABLE,
    UNSTARTED_AGREEMENTS,
    check_proposal,
)
from market.offers import OfferedGpu
from market.pricing import price_per_s
from p2p.market_records import Agreement, Offer, Proposal

MIN_CAP_INTERVALS = 3
# Rule 5: one buyer cannot tie up capacity with bids it never countersigns (each lasts until
# accept_by_ms) nor with agreements it never starts (each lasts until the provider's start window
# ends); two at once let a buyer negotiate its next job while one is starting.
MAX_UNSTARTED_PER_BUYER = 2
MIN_WINDOW_MS = 60_000  # Rule 7: less than a minute of window left is not worth a job


@dataclass(frozen=True)
class Refuse:
    reason: str
    detail: str


@dataclass(frozen=True)
class CounterPrice:
    price_micros_per_s: int
    detail: str


@dataclass(frozen=True)
class Bid:
    agreement: Agreement
    allocation: Allocation


Decision = Refuse | CounterPrice | Bid


@dataclass(frozen=True)
class ImageVerdict:
    """The provider's own check of a registry image before it bids (node.jobimages; market.negotiation
    Rule 4): the manifest and platform it will pull, or why it will not (``refuse``)."""

    manifest: bytes | None = None
    platform: str | None = None
    refuse: Refuse | None = None


def decide(proposal: Proposal, proposal_id: bytes, provider: bytes, offers: Mapping[bytes, Offer],
           gpus: Sequence[OfferedGpu], ledger: CapacityLedger, now_ms: int, hold_ms: int,
           unstarted: int = 0, *, accepting: bool | str = True,
           image_manifest: bytes | None = None, image_platform: str | None = None) -> Decision:
    """``unstarted``: agreements of this buyer that are confirmed and whose job has not started;
    ``accepting``: False while the provider takes no new jobs (Rule 6); ``image_manifest`` and
    ``image_platform``: what the provider resolved a registry image to (market.negotiation Rule 4)."""
    if accepting is not True:  # Rule 6: before the offer is even looked up; a text says why (node.owner_watch)
        return Refuse(BUSY, accepting or "this provider is shutting down and takes no new jobs")
    offer = offers.get(proposal.offer_id)
    if offer is None or offer.expires_at_ms <= now_ms:
        return Refuse(EXPIRED_OFFER, "that offer is gone; fetch the current one with /suanli/offer/1.0.0")
    reason = check_proposal(proposal, offer, provider, now_ms)
    if reason is not None:
        return Refuse(reason, f"proposal refused: {reason}")
    r = proposal.resources
    ledger.expire(now_ms)
    open_deals = ledger.unconfirmed_by(proposal.buyer) + unstarted
    if open_deals >= MAX_UNSTARTED_PER_BUYER:  # Rule 5
        return Refuse(UNSTARTED_AGREEMENTS, f"you hold {open_deals} bids or agreements from this provider whose job "
                      f"has not started (at most {MAX_UNSTARTED_PER_BUYER}); start them, or wait until they expire")
    if ledger.held() >= ledger.max_jobs:
        return Refuse(BUSY, f"{ledger.held()} jobs running or promised, the most this provider takes")
    free = ledger.free()
    free_uuids = set(free.gpu_uuids)
    fitting = [g for g in gpus if g.uuid in free_uuids and gpu_fits(g.spec, r)]
    if len(fitting) < r.gpus:
        return Refuse(NO_CAPACITY, f"needs {r.gpus} GPU(s) that fit, {len(fitting)} free")
    fitting.sort(key=lambda g: (offer.prices.gpu_micros_per_s.get(g.spec.model, 1 << 64), g.uuid))
    chosen = fitting[: r.gpus]
    if r.cpu_millis > free.cpu_millis or r.memory_mib > free.memory_mib or r.disk_mib > free.disk_mib:
        return Refuse(NO_CAPACITY, f"free now: {free.cpu_millis} millicores, {free.memory_mib} MiB memory, "
                      f"{free.disk_mib} MiB disk")
    price = price_per_s(offer.prices, r, tuple(g.spec for g in chosen))
    if price is None:
        return Refuse(NO_CAPACITY, "no price set for that GPU model")
    if price > proposal.max_price_micros_per_s:
        return CounterPrice(price, f"{PRICE_TOO_LOW}: this allocation costs {price} micro-credits/s")
    step = price * proposal.terms.interval_ms // 1000
    if proposal.terms.exposure_cap_micros < MIN_CAP_INTERVALS * step:
        # Rule 4: an honest buyer always has about two intervals unsigned (one receipt in flight, one
        # being metered); a smaller cap would pause every job at once and blame the buyer.
        return Refuse(TERMS_UNACCEPTABLE, f"the exposure cap of {proposal.terms.exposure_cap_micros} micro-credits "
                      f"is below {MIN_CAP_INTERVALS} receipt intervals at {price} micro-credits/s; the provider "
                      "must raise receipts.exposure_cap_micros")
    duration_ms = proposal.max_duration_ms
    if offer.window_end_ms and not proposal.accepts_preemption:  # Rule 7
        left_ms = offer.window_end_ms - now_ms
        if left_ms < MIN_WINDOW_MS:
            return Refuse(DURATION_TOO_LONG, f"this provider's selling window ends in {max(0, left_ms) // 1000} s; "
                          "propose with accepts_preemption (suanli run --preemptible) to run past it")
        duration_ms = min(duration_ms, left_ms)
    accept_by = min(now_ms + hold_ms, proposal.expires_at_ms + hold_ms)
    agreement = Agreement(
        provider=provider, buyer=proposal.buyer, offer_id=proposal.offer_id, proposal_id=proposal_id,
        job=proposal.job, resources=r, price_micros_per_s=price, max_duration_ms=duration_ms,
        terms=proposal.terms, created_at_ms=now_ms, accept_by_ms=accept_by, image_manifest=image_manifest,
        image_platform=image_platform)
    allocation = ledger.reserve(agreement.record_id(), tuple(g.uuid for g in chosen), r.cpu_millis, r.memory_mib,
                                hold_until_ms=accept_by, owner=proposal.buyer, disk_mib=r.disk_mib)
    if allocation is None:
        return Refuse(NO_CAPACITY, "capacity was taken a moment ago")
    return Bid(agreement, allocation)
