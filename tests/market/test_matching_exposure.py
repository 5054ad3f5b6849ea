"""The buyer's own maximum exposure (issue 13, H3): an offer whose exposure cap is above it is not
ranked, and ``explain`` says why."""

from __future__ import annotations

from dataclasses import replace

from market.matching import JobRequest, evaluate, explain, rank_offers
from p2p.envelope import sign_record
from p2p.market_records import ResourceRequest
from settlement.testing import TERMS, key_from_label, make_offer

NOW = 1_800_000_000_000


def _offer(label: str, cap: int):
    key = key_from_label(label)
    return sign_record(make_offer(key, NOW, terms=replace(TERMS, exposure_cap_micros=cap)), key).record


def _request(max_exposure: int | None) -> JobRequest:
    return JobRequest(ResourceRequest(0, None, 0, None, 1000, 1024), 1000, 60_000, "sha256:" + "ab" * 32,
                      max_exposure_micros=max_exposure)


def test_an_offer_whose_cap_exceeds_the_buyers_max_exposure_is_refused_with_a_reason():
    greedy, modest, exact = _offer("greedy", 1 << 63), _offer("modest", 5_000), _offer("exact", 100_000)
    request = _request(100_000)
    ranked = rank_offers([greedy, modest, exact], request, NOW)
    assert {c.offer.provider for c in ranked} == {modest.provider, exact.provider}
    (refused, reasons), = explain([greedy, modest, exact], request, NOW)
    assert refused == greedy
    assert reasons == [f"exposure cap {1 << 63} > your max exposure 100000 (micro-credits it may claim that you "
                       "have not countersigned; see --max-exposure)"]
    assert evaluate(modest, request, NOW)[2] == []


def test_without_a_limit_of_its_own_every_cap_is_acceptable():
    greedy = _offer("greedy", 1 << 63)
    assert [c.offer for c in rank_offers([greedy], _request(None), NOW)] == [greedy]
