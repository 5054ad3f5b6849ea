"""Negotiation over real py-libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import os
from dataclasses import replace

import trio

from market.capacity import CapacityLedger
from market.offers import OfferedGpu
from market.service import ProviderMarket, negotiate_first, negotiate_with, now_ms
from p2p.envelope import sign_record
from p2p.framing import serve_framed
from p2p.identity import generate_key
from p2p.market_records import Capacity, GpuSpec, JobSpec, Prices, Proposal, ResourceRequest
from p2p.negotiate_wire import PROTOCOL_ID
from p2p.testing import loopback_config, open_host
from settlement.testing import DEMO_IMAGE, TERMS, make_offer

H200 = GpuSpec("NVIDIA H200", 143_771, "9.0", "580.159.04", "13.0")


def provider_market(key, gpus=(), cpu=4000, mem=8192, stored=None):
    async def on_agreement(agreement, proposal, allocation):
        if stored is not None:
            stored.append(agreement)

    ledger = CapacityLedger(tuple(g.uuid for g in gpus), cpu, mem, max_jobs=8, disk_mib=8192)
    market = ProviderMarket(key=key, ledger=ledger, gpus=list(gpus), on_agreement=on_agreement, hold_ms=5000)
    now = now_ms()
    offer = replace(make_offer(key, now), capacity=Capacity(tuple(g.spec for g in gpus), cpu, mem, 8192),
                    free=Capacity(tuple(g.spec for g in gpus), cpu, mem, 8192),
                    prices=Prices({"NVIDIA H200": 700}, 50, 10))
    signed = sign_record(offer, key)
    market.publish(signed)
    return market, signed


def proposal_for(buyer, offer_signed, gpus=0, max_price=10_000):
    now = now_ms()
    offer = offer_signed.record
    return sign_record(Proposal(
        buyer=buyer.public, provider=offer.provider, offer_id=offer_signed.record_id,
        job=JobSpec(DEMO_IMAGE, None, ("sh", "-c", "echo hi"), {}, None),
        resources=ResourceRequest(gpus, None, 0, None, 1000, 512), max_price_micros_per_s=max_price,
        max_duration_ms=60_000, terms=TERMS, nonce=os.urandom(16), created_at_ms=now, expires_at_ms=now + 10_000),
        buyer)


def provider_config(market):
    return loopback_config(market.key, handlers={PROTOCOL_ID: serve_framed(
        market.handle, protocol=PROTOCOL_ID, stream_budget_s=10)})


async def test_buyer_and_provider_hold_the_same_agreement():
    key, buyer = generate_key(), generate_key()
    stored = []
    market, offer = provider_market(key, stored=stored)
    async with open_host(provider_config(market)) as provider:
        async with open_host(loopback_config(buyer, bootstrap=(provider.addrs()[0],))) as client:
            with trio.fail_after(10):
                deal = await negotiate_with(client, provider.peer_id, buyer, proposal_for(buyer, offer))
    assert deal.agreement.is_complete
    assert stored == [deal.agreement] and stored[0].to_bytes() == deal.agreement.to_bytes()
    assert deal.agreement.record.price_micros_per_s == 50 + 5
    assert market.ledger.running() == 1


async def test_twenty_buyers_race_for_one_gpu():
    key = generate_key()
    stored = []
    market, offer = provider_market(key, gpus=[OfferedGpu("GPU-only", H200)], stored=stored)
    outcomes = []
    async with open_host(provider_config(market)) as provider:
        boot = (provider.addrs()[0],)

        async def one_buyer():
            buyer = generate_key()
            async with open_host(loopback_config(buyer, bootstrap=boot)) as client:
                deal, attempts = await negotiate_first(
                    client, buyer, [(provider.peer_id, proposal_for(buyer, offer, gpus=1))], per_candidate_s=20)
                outcomes.append((deal, attempts[-1].outcome))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one_buyer)
    winners = [d for d, _ in outcomes if d is not None]
    losers = [o for d, o in outcomes if d is None]
    assert len(winners) == 1 and len(losers) == 19 and stored == [winners[0].agreement]
    assert all("no_capacity" in o for o in losers), losers


async def test_silent_provider_costs_only_its_deadline_then_the_next_is_tried():
    good_key, silent_key, buyer = generate_key(), generate_key(), generate_key()
    market, offer = provider_market(good_key)
    silent_market, silent_offer = provider_market(silent_key)

    async def never_answer(stream):
        await trio.sleep(3600)

    silent_cfg = loopback_config(silent_key, handlers={PROTOCOL_ID: never_answer})
    async with open_host(provider_config(market)) as good, open_host(silent_cfg) as silent:
        async with open_host(loopback_config(buyer, bootstrap=(good.addrs()[0], silent.addrs()[0]))) as client:
            start = trio.current_time()
            deal, attempts = await negotiate_first(client, buyer, [
                (silent.peer_id, proposal_for(buyer, silent_offer)), (good.peer_id, proposal_for(buyer, offer))],
                per_candidate_s=1.5)
            elapsed = trio.current_time() - start
    assert deal is not None and deal.agreement.record.provider == good_key.public
    assert attempts[0].outcome == "no answer within 1.5 s" and attempts[1].outcome == "agreed"
    assert elapsed < 1.5 + 5  # the silent one cost its deadline, not more


async def test_counter_when_the_price_is_too_low():
    key, buyer = generate_key(), generate_key()
    market, offer = provider_market(key)
    async with open_host(provider_config(market)) as provider:
        async with open_host(loopback_config(buyer, bootstrap=(provider.addrs()[0],))) as client:
            deal, attempts = await negotiate_first(client, buyer,
                                                   [(provider.peer_id, proposal_for(buyer, offer, max_price=10))], 10)
    assert deal is None and "asks 55 micro-credits/s (your max is 10)" in attempts[0].outcome
    assert market.ledger.held() == 0
