"""Issue 13, L1: a buyer whose clock is ahead is told so, instead of a bare "already expired"."""

from __future__ import annotations

from dataclasses import replace

from market.negotiation import check_agreement
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, AGREEMENT = make_agreement(P, B)


def test_a_buyer_clock_ahead_of_the_providers_is_named():
    ag = AGREEMENT.record
    ahead = ag.created_at_ms + 12_000  # the buyer's clock reads 12 s past the bid's own time on arrival
    assert ag.accept_by_ms <= ahead
    assert check_agreement(ag, PROPOSAL.record, PROPOSAL.record_id, ahead) == [
        "already expired by your clock, which is 12 s ahead of the provider's (its bid's time); "
        "set your clock right (NTP)"]


def test_a_bid_that_really_expired_is_still_just_expired():
    quick = replace(AGREEMENT.record, accept_by_ms=AGREEMENT.record.created_at_ms + 500)
    now = quick.created_at_ms + 600  # within a network's delay of the bid: no clock to blame
    assert check_agreement(quick, PROPOSAL.record, PROPOSAL.record_id, now) == ["already expired"]
