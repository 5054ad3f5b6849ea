"""market.deal Rule 6 (issue 14, item 2): while the provider is not accepting, no proposal gets a bid,
whichever live offer it names, and no capacity is held for it."""

from __future__ import annotations

from market.capacity import CapacityLedger
from market.deal import Bid, Refuse, decide
from market.negotiation import BUSY
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("switch-provider"), key_from_label("switch-buyer")
OFFER, PROPOSAL, _ = make_agreement(P, B)
NOW = PROPOSAL.record.created_at_ms + 5


def _decide(book: CapacityLedger, accepting: bool):
    return decide(PROPOSAL.record, PROPOSAL.record_id, P.public, {OFFER.record_id: OFFER.record}, (), book, NOW,
                  hold_ms=5000, accepting=accepting)


def test_an_unexpired_earlier_offer_gets_a_bid_only_while_accepting():
    book = CapacityLedger((), 2000, 4096, 4, 8192)
    refused = _decide(book, accepting=False)
    assert isinstance(refused, Refuse) and refused.reason == BUSY and "shutting down" in refused.detail
    assert book.free().cpu_millis == 2000 and book.held() == 0
    assert isinstance(_decide(book, accepting=True), Bid)
