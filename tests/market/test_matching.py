"""Matching: ranking, ties, every rejection reason (the offers held are p2p.gossip.OfferLedger's)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from market.capacity import CapacityLedger
from market.matching import JobRequest, evaluate, explain, rank_offers
from market.pricing import price_per_s
from p2p.envelope import sign_record
from p2p.market_records import Capacity, GpuSpec, Limits, Prices, ResourceRequest
from settlement.testing import key_from_label, make_offer

NOW = 1_800_000_000_000
H200 = GpuSpec("NVIDIA H200", 143_771, "9.0", "580.159.04", "13.0")
RTX = GpuSpec("NVIDIA GeForce RTX 3060", 12_288, "8.6", "550.54", "12.4")


def offer(label="p", seq=1, ttl=60_000, gpus=(), cpu=4000, mem=8192, prices=None, limits=None, disk=8192):
    key = key_from_label(label)
    cap = Capacity(gpus=gpus, cpu_millis=cpu, memory_mib=mem, disk_mib=disk)
    base = make_offer(key, NOW, seq)
    return sign_record(replace(base, expires_at_ms=NOW + ttl, capacity=cap, free=cap,
                               prices=prices or base.prices, limits=limits or base.limits), key)


def request(gpus=0, model=None, gpu_mem=0, cc=None, cpu=1000, mem=1024, max_price=1000, duration_ms=60_000,
            image="sha256:" + "ab" * 32):
    return JobRequest(ResourceRequest(gpus, model, gpu_mem, cc, cpu, mem), max_price, duration_ms, image)


# -- pricing and matching -----------------------------------------------------------------------------

def test_price_rounds_each_resource_up():
    prices = Prices({"NVIDIA H200": 700}, cpu_core_micros_per_s=3, memory_gib_micros_per_s=5)
    r = ResourceRequest(1, None, 0, None, 1500, 1536)
    assert price_per_s(prices, r, (H200,)) == 700 + 5 + 8  # ceil(4.5) + ceil(7.5)
    assert price_per_s(prices, r, (RTX,)) is None


def test_ranking_price_then_reputation_then_latency_then_key():
    offers = [offer("cheap", prices=Prices({}, 10, 0)), offer("dear", prices=Prices({}, 90, 0)),
              offer("mid1", prices=Prices({}, 50, 0)), offer("mid2", prices=Prices({}, 50, 0))]
    records = [o.record for o in offers]
    ranked = rank_offers(records, request(), NOW)
    assert [c.price_micros_per_s for c in ranked] == [10, 50, 50, 90]
    mid = sorted([key_from_label("mid1").public, key_from_label("mid2").public])
    assert [c.offer.provider for c in ranked[1:3]] == mid  # tie: provider key bytes
    rep = {key_from_label("mid2").public: 5}
    assert rank_offers(records, request(), NOW, reputation=rep)[1].offer.provider == key_from_label("mid2").public
    lat = {key_from_label("mid2").public: 3, key_from_label("mid1").public: 40}
    assert rank_offers(records, request(), NOW, latency_ms=lat)[1].offer.provider == key_from_label("mid2").public
    assert rank_offers(records, request(), NOW, limit=2) == ranked[:2]


def test_ranking_is_deterministic_whatever_the_input_order():
    records = [offer(f"p{i}", prices=Prices({}, i % 4, 0)).record for i in range(30)]
    first = rank_offers(records, request(), NOW, limit=30)
    for seed in range(5):
        shuffled = records[:]
        random.Random(seed).shuffle(shuffled)
        assert rank_offers(shuffled, request(), NOW, limit=30) == first


GPU_PRICES = Prices({"NVIDIA H200": 700, "NVIDIA GeForce RTX 3060": 60}, 10, 2)


@pytest.mark.parametrize("kwargs, offer_kwargs, reasons", [
    ({}, {}, []),
    ({"max_price": 100}, {"prices": Prices({}, 120, 0)}, ["price 120 > max 100"]),
    ({"gpus": 1, "gpu_mem": 24_576}, {"gpus": (RTX,), "prices": GPU_PRICES},
     ["needs 24576 MiB GPU memory, has 12288"]),
    ({"gpus": 2, "model": "NVIDIA H200"}, {"gpus": (H200,), "prices": GPU_PRICES}, ["needs 2 x NVIDIA H200, 1 free"]),
    ({"gpus": 1, "cc": "9.0"}, {"gpus": (RTX,), "prices": GPU_PRICES}, ["needs 1 x GPU, 0 free"]),
    ({"gpus": 1}, {"gpus": (RTX,), "prices": Prices({}, 1, 1)}, ["provider sets no price for that GPU model"]),
    ({"cpu": 8000}, {}, ["needs 8 CPU cores, 4 free"]),
    ({"mem": 16384}, {}, ["needs 16384 MiB memory, 8192 free"]),
    ({"duration_ms": 7_200_000}, {}, ["duration 7200 s > provider max 3600 s"]),
    ({}, {"limits": Limits(3600, 4, ("sha256:" + "cd" * 32,))}, ["image not allowed by the provider"]),
    ({}, {"ttl": 0}, ["offer expired"]),
])
def test_every_rejection_reason(kwargs, offer_kwargs, reasons):
    o = offer(**offer_kwargs).record if offer_kwargs.get("ttl") != 0 else replace(offer().record, expires_at_ms=NOW)
    _, _, got = evaluate(o, request(**kwargs), NOW)
    assert got == reasons
    ranked = rank_offers([o], request(**kwargs), NOW)
    assert (ranked == []) == bool(reasons)
    assert explain([o], request(**kwargs), NOW) == ([(o, reasons)] if reasons else [])


def test_gpu_request_picks_the_cheapest_fitting_gpus():
    o = offer(gpus=(H200, RTX, RTX), prices=GPU_PRICES).record
    (c,) = rank_offers([o], request(gpus=2, cc="8.0", max_price=10_000), NOW)
    assert c.gpus == (RTX, RTX) and c.price_micros_per_s == 120 + 10 + 2


# -- capacity -----------------------------------------------------------------------------------------

def test_racing_reservations_get_exactly_one_gpu_each():
    ledger = CapacityLedger(("GPU-a",), cpu_millis=4000, memory_mib=8192, max_jobs=4)
    winners = [k for k in (bytes([i]) * 32 for i in range(20))
               if ledger.reserve(k, ("GPU-a",), 1000, 1024, hold_until_ms=NOW + 5000)]
    assert len(winners) == 1
    assert ledger.free().gpu_uuids == ()
    assert ledger.expire(NOW + 5000) == winners and ledger.free().gpu_uuids == ("GPU-a",)


def test_confirmed_reservation_holds_until_released():
    ledger = CapacityLedger((), cpu_millis=2000, memory_mib=2048, max_jobs=2)
    assert ledger.reserve(b"a", (), 2000, 1024, NOW + 10)
    assert not ledger.reserve(b"b", (), 1, 1, NOW + 10)  # no CPU left
    assert ledger.confirm(b"a", NOW) and ledger.expire(NOW + 100) == [] and ledger.running() == 1
    ledger.release(b"a")
    assert ledger.free().cpu_millis == 2000


def test_late_confirmation_is_refused():
    ledger = CapacityLedger((), cpu_millis=2000, memory_mib=2048, max_jobs=2)
    ledger.reserve(b"a", (), 1000, 1024, NOW + 10)
    assert ledger.confirm(b"a", NOW + 10) is None and ledger.free().cpu_millis == 2000


def _brute_force(offers, req, now, limit):
    scored = []
    for o in offers:
        price, gpus, reasons = evaluate(o, req, now)
        if not reasons:
            scored.append(((price, 0, 1 << 31, o.provider), o, price))
    return [(o.provider, p) for _, o, p in sorted(scored, key=lambda s: s[0])[:limit]]


@pytest.mark.parametrize("seed", range(8))
def test_fast_ranking_agrees_with_evaluate(seed):
    rng = random.Random(seed)
    models = [H200, RTX, replace(RTX, model="NVIDIA A10", memory_mib=24_576, compute_capability="8.6")]
    offers = []
    for i in range(150):
        gpus = tuple(rng.choice(models) for _ in range(rng.choice((0, 1, 2, 3))))
        prices = Prices({m.model: rng.randint(50, 900) for m in models if rng.random() < 0.8}, rng.randint(1, 60),
                        rng.randint(1, 10))
        offers.append(offer(f"o{seed}-{i}", gpus=gpus, cpu=rng.choice((1000, 4000)), mem=rng.choice((1024, 8192)),
                            prices=prices, ttl=rng.choice((0, 60_000)) or 1).record)
    for req in (request(), request(gpus=1, gpu_mem=16_000, max_price=900), request(gpus=2, cc="8.6", max_price=3000),
                request(gpus=1, model="NVIDIA A10", cpu=2000, max_price=700)):
        fast = [(c.offer.provider, c.price_micros_per_s) for c in rank_offers(offers, req, NOW, limit=15)]
        assert fast == _brute_force(offers, req, NOW, 15)
