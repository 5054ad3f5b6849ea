"""Disk is a resource like CPU and memory: offered, matched, reserved, and refused when short (H4)."""

from __future__ import annotations

from dataclasses import replace

from market.capacity import CapacityLedger
from market.deal import Refuse, decide
from market.matching import JobRequest, evaluate, rank_offers
from market.negotiation import NO_CAPACITY
from market.offers import build_offer
from p2p.envelope import sign_record
from p2p.market_records import DEFAULT_DISK_MIB, Capacity, ResourceRequest
from settlement.testing import key_from_label, make_agreement, make_offer

P, B = key_from_label("provider"), key_from_label("buyer")
NOW = 1_800_000_000_000


def test_a_request_names_its_disk_and_defaults_to_one_gib():
    assert ResourceRequest(0, None, 0, None, 1000, 256).disk_mib == DEFAULT_DISK_MIB == 1024


def test_matching_refuses_an_offer_without_enough_free_disk_and_says_why():
    base = make_offer(P, NOW)
    small = replace(base, free=replace(base.free, disk_mib=512))
    request = JobRequest(ResourceRequest(0, None, 0, None, 1000, 256, disk_mib=2048), 10_000, 60_000,
                         "sha256:" + "ab" * 32)
    assert rank_offers([small], request, NOW) == []
    assert "needs 2048 MiB disk, 512 free" in evaluate(small, request, NOW)[2]
    assert len(rank_offers([base], request, NOW)) == 1


def test_the_ledger_holds_disk_and_a_deal_is_refused_when_it_is_taken():
    ledger = CapacityLedger((), 4000, 8192, 4, disk_mib=1500)
    assert ledger.reserve(b"a", (), 1000, 256, NOW + 60_000, disk_mib=1024) is not None
    assert ledger.free().disk_mib == 476
    assert ledger.reserve(b"b", (), 1000, 256, NOW + 60_000, disk_mib=1024) is None
    offer, proposal, _ = make_agreement(P, B, NOW)
    d = decide(proposal.record, proposal.record_id, P.public, {offer.record_id: offer.record}, [], ledger,
               proposal.record.created_at_ms + 5, hold_ms=5000)
    assert isinstance(d, Refuse) and d.reason == NO_CAPACITY and "476 MiB disk" in d.detail


def test_build_offer_advertises_total_and_free_disk():
    terms_offer = make_offer(P, NOW)
    from market.offers import ProviderTerms
    terms = ProviderTerms(terms_offer.prices, terms_offer.limits, terms_offer.terms)
    offer = build_offer(P.public, [], terms, [], 2000, 4096, [], 2000, 4096, 1, NOW, disk_mib=10_000,
                        free_disk_mib=3000)
    assert offer.capacity == Capacity((), 2000, 4096, 10_000) and offer.free.disk_mib == 3000
    assert sign_record(offer, P).record.free.disk_mib == 3000
