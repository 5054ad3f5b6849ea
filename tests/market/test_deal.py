"""The provider's decision on a proposal: refuse, counter, or bid with capacity held."""

from __future__ import annotations

from dataclasses import replace

from market.capacity import CapacityLedger
from market.deal import Bid, CounterPrice, Refuse, decide
from market.negotiation import BUSY, EXPIRED_OFFER, IMAGE_NOT_ALLOWED, NO_CAPACITY
from market.offers import OfferedGpu
from p2p.market_records import Capacity, GpuSpec, Limits, Prices
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, _ = make_agreement(P, B)
NOW = PROPOSAL.record.created_at_ms + 5
H200 = GpuSpec("NVIDIA H200", 143_771, "9.0", "580.159.04", "13.0")


def ledger(gpus=(), cpu=2000, mem=4096, jobs=4, disk=8192):
    return CapacityLedger(tuple(gpus), cpu, mem, jobs, disk)


def run(proposal=PROPOSAL.record, offer=OFFER.record, gpus=(), book=None):
    return decide(proposal, PROPOSAL.record_id, P.public, {OFFER.record_id: offer}, gpus, book or ledger(), NOW,
                  hold_ms=5000)


def test_bid_reserves_and_prices_the_allocation():
    book = ledger()
    d = run(book=book)
    assert isinstance(d, Bid)
    assert d.agreement.price_micros_per_s == 50 + 10  # 1 core at 50/s + 1 GiB at 10/s
    assert d.agreement.accept_by_ms == NOW + 5000 and book.free().cpu_millis == 1000


def test_counter_when_only_the_price_is_wrong():
    d = run(proposal=replace(PROPOSAL.record, max_price_micros_per_s=59))
    assert d == CounterPrice(60, "price_too_low: this allocation costs 60 micro-credits/s")


def test_refusals():
    assert run(proposal=replace(PROPOSAL.record, offer_id=b"\0" * 32)).reason == EXPIRED_OFFER
    assert run(offer=replace(OFFER.record, limits=Limits(3600, 4, ("sha256:" + "cd" * 32,)))).reason == \
        IMAGE_NOT_ALLOWED
    assert run(book=ledger(cpu=500)).reason == NO_CAPACITY
    gpu_proposal = replace(PROPOSAL.record, resources=replace(PROPOSAL.record.resources, gpus=1))
    assert run(proposal=gpu_proposal).reason == NO_CAPACITY
    busy = ledger(jobs=1)
    busy.reserve(b"x", (), 1, 1, NOW + 10_000)
    assert run(book=busy).reason == BUSY


def test_gpu_bid_holds_the_gpu_by_uuid():
    offer = replace(OFFER.record, prices=Prices({"NVIDIA H200": 700}, 50, 10),
                    free=Capacity((H200,), 2000, 4096, 8192))
    proposal = replace(PROPOSAL.record, max_price_micros_per_s=1000,
                       resources=replace(PROPOSAL.record.resources, gpus=1))
    book = ledger(gpus=("GPU-1",))
    d = run(proposal=proposal, offer=offer, gpus=[OfferedGpu("GPU-1", H200)], book=book)
    assert isinstance(d, Bid) and d.allocation.gpu_uuids == ("GPU-1",) and d.agreement.price_micros_per_s == 760
    other_buyer = key_from_label("another buyer").public
    again = run(proposal=replace(proposal, nonce=b"\1" * 16, buyer=other_buyer), offer=offer,
                gpus=[OfferedGpu("GPU-1", H200)], book=book)
    assert isinstance(again, Refuse) and again.reason == NO_CAPACITY


def test_a_cap_below_three_intervals_at_this_price_is_refused():
    terms = replace(PROPOSAL.record.terms, exposure_cap_micros=3 * 60 - 1)  # price 60/s, 1 s receipts
    offer = replace(OFFER.record, terms=terms)
    d = run(proposal=replace(PROPOSAL.record, terms=terms), offer=offer)
    assert isinstance(d, Refuse) and d.reason == "terms_unacceptable" and "exposure cap" in d.detail
    ok = replace(PROPOSAL.record.terms, exposure_cap_micros=3 * 60)
    assert isinstance(run(proposal=replace(PROPOSAL.record, terms=ok), offer=replace(OFFER.record, terms=ok)), Bid)


def test_bids_and_unstarted_agreements_per_buyer_are_limited():
    """Issue 13 M3: bids not yet countersigned and agreements not yet started count together."""
    from market.deal import MAX_UNSTARTED_PER_BUYER
    from market.negotiation import UNSTARTED_AGREEMENTS

    book = ledger(cpu=16_000, mem=16_384, jobs=16)

    def bid(i, unstarted=0, proposal=PROPOSAL.record):
        return decide(proposal, bytes([i]) * 32, P.public, {OFFER.record_id: OFFER.record}, (), book, NOW,
                      hold_ms=5000, unstarted=unstarted)

    assert MAX_UNSTARTED_PER_BUYER == 2
    assert isinstance(bid(0), Bid)
    refused = bid(1, unstarted=1)  # one open bid + one agreement not started
    assert isinstance(refused, Refuse) and refused.reason == UNSTARTED_AGREEMENTS
    assert "not started (at most 2)" in refused.detail
    assert isinstance(bid(2), Bid)  # two open bids, nothing unstarted
    again = bid(3)
    assert isinstance(again, Refuse) and again.reason == UNSTARTED_AGREEMENTS
    other = replace(PROPOSAL.record, buyer=P.public)  # another buyer is not held back
    assert isinstance(bid(4, proposal=other), Bid)
    assert book.free().cpu_millis == 16_000 - 3 * 1000
