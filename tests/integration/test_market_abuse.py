"""Negotiation abuse over real hosts (issue 13): a replayed proposal (L7) and capacity squatting (M3)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import trio

from market.capacity import CapacityLedger
from market.negotiation import DUPLICATE_PROPOSAL, UNSTARTED_AGREEMENTS
from market.reputation import NEVER_STARTED
from market.service import NegotiationRefused, ProviderMarket, negotiate_with, now_ms
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.envelope import sign_record, signed_from_wire
from p2p.framing import FramedStream, serve_framed
from p2p.identity import generate_key
from p2p.market_records import Capacity, JobSpec, Prices, Proposal, ResourceRequest
from p2p.negotiate_wire import PROTOCOL_ID, Agree, Propose, decode_message
from p2p.receipt_records import EXPIRED, Receipt
from p2p.testing import loopback_config, open_host, wait_until
from settlement.astore import open_store
from settlement.audit import audit, read_inputs
from settlement.store import Store
from settlement.testing import DEMO_IMAGE, TERMS, make_offer


# --- L7: a replayed proposal ---------------------------------------------------------------------
def _market(key, stored):
    async def on_agreement(agreement, proposal, allocation):
        stored.append(agreement)

    ledger = CapacityLedger((), 4000, 8192, max_jobs=8, disk_mib=1 << 20)
    market = ProviderMarket(key=key, ledger=ledger, gpus=[], on_agreement=on_agreement, hold_ms=5000)
    now = now_ms()
    offer = replace(make_offer(key, now), capacity=Capacity((), 4000, 8192), free=Capacity((), 4000, 8192),
                    prices=Prices({}, 50, 10))
    signed = sign_record(offer, key)
    market.publish(signed)
    return market, signed


def _proposal(buyer, offer_signed):
    now = now_ms()
    offer = offer_signed.record
    return sign_record(Proposal(
        buyer=buyer.public, provider=offer.provider, offer_id=offer_signed.record_id,
        job=JobSpec(DEMO_IMAGE, None, ("sh", "-c", "echo hi"), {}, None),
        resources=ResourceRequest(0, None, 0, None, 1000, 512), max_price_micros_per_s=10_000,
        max_duration_ms=60_000, terms=TERMS, nonce=os.urandom(16), created_at_ms=now, expires_at_ms=now + 30_000),
        buyer)


async def test_a_replayed_proposal_gets_no_second_agreement():
    key, buyer = generate_key(), generate_key()
    stored = []
    market, offer = _market(key, stored)
    config = loopback_config(key, handlers={PROTOCOL_ID: serve_framed(market.handle, protocol=PROTOCOL_ID,
                                                                      stream_budget_s=10)})
    async with open_host(config) as provider:
        async with open_host(loopback_config(buyer, bootstrap=(provider.addrs()[0],))) as client:
            proposal = _proposal(buyer, offer)
            with trio.fail_after(30):
                # A bid the buyer walks away from is forgotten: the same proposal may be tried again.
                framed = FramedStream(await client.open_stream(provider.peer_id, PROTOCOL_ID))
                await framed.send_frame(Propose(proposal.to_bytes()).encode())
                assert isinstance(decode_message(await framed.receive_frame()), Agree)
                await framed.aclose()
                await wait_until(lambda: market.ledger.held() == 0, timeout_s=10)
                deal = await negotiate_with(client, provider.peer_id, buyer, proposal)
                # The very same signed proposal, replayed on a new stream, is refused.
                with pytest.raises(NegotiationRefused) as refused:
                    await negotiate_with(client, provider.peer_id, buyer, proposal)
    assert refused.value.fields["reason"] == DUPLICATE_PROPOSAL
    assert stored == [deal.agreement] and market.ledger.held() == 1


# --- M3: capacity squatting ------------------------------------------------------------------------
@pytest.mark.docker
async def test_agreements_never_started_are_closed_and_bounded_per_buyer(tmp_path, demo_image):
    provider_key, squatter, other = generate_key(), generate_key(), generate_key()
    setup = replace(local_setup(tmp_path / "provider", provider_key), start_timeout_s=3.0)  # cpu 2000

    async def deal(client, buyer, runtime):
        return await negotiate_with(client, provider_key.peer_id, buyer,
                                    make_proposal(buyer, runtime.offer, demo_image, ["true"], cpu_millis=500))

    async with open_provider(setup) as runtime:
        boot = (runtime.node.addrs()[0],)
        async with open_host(loopback_config(squatter, bootstrap=boot)) as a, \
                open_host(loopback_config(other, bootstrap=boot)) as b:
            with trio.fail_after(60):
                await deal(a, squatter, runtime)
                await deal(a, squatter, runtime)  # countersigned twice, never started
                with pytest.raises(NegotiationRefused) as refused:
                    await deal(a, squatter, runtime)
                assert refused.value.fields["reason"] == UNSTARTED_AGREEMENTS
                await deal(b, other, runtime)  # another buyer is not held back
                assert runtime.ledger.free().cpu_millis == 2000 - 3 * 500
                # After the start window every agreement is closed and its capacity is free again.
                await wait_until(lambda: not runtime.services.active, timeout_s=30)
                assert runtime.ledger.free().cpu_millis == 2000 and runtime.ledger.held() == 0
                await deal(a, squatter, runtime)  # the bound is released with the agreements
            counts = await runtime.store.outcome_counts()
    assert (squatter.public, NEVER_STARTED, 2) in counts and (other.public, NEVER_STARTED, 1) in counts
    async with open_store(tmp_path / "provider" / "node.db") as store:
        chains = await store.open_agreements(provider_key.public)
    assert len(chains) <= 1  # the last deal may still be open at shutdown; the three expired ones are closed
    results = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert len(results) == 4 and all(r.report.ok for r in results), [r.report.findings for r in results]
    finals = _final_reasons(tmp_path / "provider" / "node.db")
    assert len(finals) == 4 and finals.count(EXPIRED) >= 3


def _final_reasons(db):
    """The reason of each agreement's last receipt (None: no receipt)."""
    store = Store(db, readonly=True)
    try:
        lasts = [store.last_receipt(a) for a in store.agreement_ids()]
    finally:
        store.close()
    return [None if r is None else signed_from_wire(r, Receipt).record.reason for r in lasts]
