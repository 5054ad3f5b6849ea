"""market.deal Rule 7: a job is agreed only up to the end of the owner's selling window, unless the buyer
accepts preemption."""

from __future__ import annotations

from dataclasses import replace

from market.capacity import CapacityLedger
from market.deal import MIN_WINDOW_MS, Bid, Refuse, decide
from market.negotiation import DURATION_TOO_LONG
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, _ = make_agreement(P, B)
NOW = PROPOSAL.record.created_at_ms + 5


def run(window_left_ms: int, accepts: bool = False):
    offer = replace(OFFER.record, window_end_ms=NOW + window_left_ms if window_left_ms else 0, preemptible=True)
    proposal = replace(PROPOSAL.record, accepts_preemption=accepts)
    return decide(proposal, PROPOSAL.record_id, P.public, {OFFER.record_id: offer}, (),
                  CapacityLedger((), 2000, 4096, 4, 8192), NOW, hold_ms=5000)


def test_the_duration_is_cut_at_the_window_end():
    assert PROPOSAL.record.max_duration_ms == 600_000
    d = run(120_000)
    assert isinstance(d, Bid) and d.agreement.max_duration_ms == 120_000
    assert run(0).agreement.max_duration_ms == 600_000  # no scheduled end
    assert run(3_600_000).agreement.max_duration_ms == 600_000  # the window outlasts the job


def test_a_window_about_to_close_is_refused_with_the_way_round_it():
    d = run(MIN_WINDOW_MS - 1)
    assert isinstance(d, Refuse) and d.reason == DURATION_TOO_LONG and "--preemptible" in d.detail


def test_a_buyer_that_accepts_preemption_keeps_its_duration():
    d = run(30_000, accepts=True)
    assert isinstance(d, Bid) and d.agreement.max_duration_ms == 600_000


def test_the_buyers_flag_reaches_its_request():
    from node.buyrequest import BuyRequest

    image = "sha256:" + "ab" * 32
    assert BuyRequest.build(["true"], image=image, preemptible=True).accepts_preemption
    assert not BuyRequest.build(["true"], image=image).accepts_preemption
