"""Issue 14, item 2: pausing sales is one switch (market.deal Rule 6).

During the shutdown grace the provider publishes an offer with nothing free, but a buyer may hold the
previous offer, which has not expired. It must get no firm bid on it (before the fix it got one: the
switch only emptied the next offer)."""

from __future__ import annotations

import pytest
import trio

from market.negotiation import BUSY
from market.service import NegotiationRefused, negotiate_with
from node.provider import _shutdown, open_provider
from node.testing import local_setup, make_proposal
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host

pytestmark = pytest.mark.docker


async def test_a_buyer_holding_the_previous_offer_gets_no_bid_during_the_shutdown_grace(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        earlier = runtime.offer  # the offer the buyer holds: capacity free, minutes to live
        assert earlier is not None and earlier.record.free.cpu_millis > 0
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            with trio.fail_after(30):
                await _shutdown(runtime, None)  # no jobs: the grace is over at once; the offer is withdrawn
            assert runtime.offer is not None and runtime.offer.record.free.cpu_millis == 0
            with pytest.raises(NegotiationRefused) as refused, trio.fail_after(30):
                await negotiate_with(client, provider_key.peer_id, buyer,
                                     make_proposal(buyer, earlier, demo_image, ["true"]))
            assert refused.value.fields["reason"] == BUSY
            assert runtime.ledger.free().cpu_millis == runtime.ledger.cpu_millis  # nothing held for it
