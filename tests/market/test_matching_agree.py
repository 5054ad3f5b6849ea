"""One rule, two paths (issue 14 item 5): ``evaluate`` is the definition of which offers can run a job
and at what price; ``rank_offers`` is its fast path (no reasons, a bounded heap). For any book and any
request, the fast path returns exactly the offers ``evaluate`` finds feasible, at ``evaluate``'s price
and GPUs, in Rule 1's order.

Every field either path reads varies here: expiry, CPU, memory, disk, GPU count, model, memory and
compute capability, GPU prices (some unpriced), duration limits, allowed images (listed as local ids,
asked for as local ids or registry references, or as a tag that pins nothing), the images an offer holds
(Rule 1's first key after feasibility), the exposure cap against the buyer's max exposure, reputation and
latency.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from market.matching import JobRequest, evaluate, image_digest, rank_offers
from p2p.market_records import Capacity, GpuSpec, Limits, Prices, ResourceRequest
from settlement.testing import key_from_label, make_offer

NOW = 1_800_000_000_000
IMAGES = ("sha256:" + "ab" * 32, "sha256:" + "cd" * 32)
# What buyers ask for: the local ids (drawn three times as often, so feasible offers stay common), a
# registry reference to a listed digest, one to an unlisted digest, and a tag.
ASKED = IMAGES * 3 + ("127.0.0.1:5000/app@sha256:" + "ab" * 32, "registry.example/team/py@sha256:" + "ef" * 32,
                      "registry.example/team/py:latest")
HELD = tuple(bytes.fromhex(h * 32) for h in ("ab", "cd", "ef", "01"))
MODELS = (GpuSpec("NVIDIA H200", 143_771, "9.0", "580.159.04", "13.0"),
          GpuSpec("NVIDIA GeForce RTX 3060", 12_288, "8.6", "550.54", "12.4"),
          GpuSpec("NVIDIA A10", 24_576, "8.6", "550.54", "12.4"),
          GpuSpec("Old", 4096, "", "470", "11.0"), GpuSpec("Odd", 8192, "x.y", "470", "11.0"))
BASE = make_offer(key_from_label("agree"), NOW, 1)


@st.composite
def offers(draw: st.DrawFn, index: int) -> object:
    gpus = tuple(draw(st.lists(st.sampled_from(MODELS), max_size=3)))
    free = Capacity(gpus, draw(st.sampled_from((500, 1000, 4000, 4000))),
                    draw(st.sampled_from((512, 1024, 8192, 8192))), draw(st.sampled_from((0, 1024, 8192, 8192))))
    unit = {m.model: draw(st.sampled_from((None, 1, 2, 3, 300))) for m in MODELS}  # None: unpriced
    prices = Prices({model: p for model, p in unit.items() if p is not None},
                    draw(st.sampled_from((0, 0, 1, 30))), draw(st.sampled_from((0, 0, 1, 5))))
    images = draw(st.sampled_from(((), (), (), IMAGES[:1], IMAGES[1:], IMAGES)))
    limits = Limits(draw(st.sampled_from((30, 60, 3600, 3600))), 4, images)
    held = tuple(draw(st.lists(st.sampled_from(HELD), max_size=3, unique=True)))
    terms = replace(BASE.terms, exposure_cap_micros=draw(st.sampled_from((0, 0, 100_000, 2_000_000))))
    provider = bytes([draw(st.integers(0, 3))]) + index.to_bytes(31, "big")
    expires_at_ms = NOW + draw(st.sampled_from((-1, 0, 1, 60_000, 60_000, 60_000)))
    return replace(BASE, provider=provider, expires_at_ms=expires_at_ms,
                   capacity=free, free=free, prices=prices, limits=limits, terms=terms, images=held)


@st.composite
def books(draw: st.DrawFn) -> list:
    return [draw(offers(i)) for i in range(draw(st.integers(0, 12)))]


requests = st.builds(
    lambda gpus, model, gpu_mem, cc, cpu, mem, disk, price, duration_ms, image, exposure: JobRequest(
        ResourceRequest(gpus, model, gpu_mem, cc, cpu, mem, disk), price, duration_ms, image, exposure),
    st.sampled_from((0, 0, 1, 2, 3)), st.sampled_from((None, None, "NVIDIA A10", "Old")), st.sampled_from((0, 16_000)),
    st.sampled_from((None, "8.0", "9.0")), st.sampled_from((0, 1000, 2000)), st.sampled_from((0, 1024, 4096)),
    st.sampled_from((0, 1024)), st.sampled_from((0, 1, 2, 3, 5, 100, 1000, 4000)),
    st.sampled_from((1, 30_000, 60_000, 60_001, 3_600_000)),
    st.sampled_from(ASKED), st.sampled_from((None, 0, 100_000)))


@settings(max_examples=600, deadline=None)
@given(books(), requests, st.dictionaries(st.integers(0, 11), st.integers(-3, 3)),
       st.dictionaries(st.integers(0, 11), st.integers(0, 50)), st.integers(1, 13))
def test_the_fast_ranking_is_evaluate_in_rule_1_order(book, req, rep_by_index, lat_by_index, limit):
    reputation = {book[i].provider: v for i, v in rep_by_index.items() if i < len(book)}
    latency = {book[i].provider: v for i, v in lat_by_index.items() if i < len(book)}
    feasible = []
    for index, offer in enumerate(book):
        price, gpus, reasons = evaluate(offer, req, NOW)
        if not reasons:
            assert price is not None
            cached = image_digest(req.image) in offer.images
            key = (not cached, price, -reputation.get(offer.provider, 0), latency.get(offer.provider, 1 << 31),
                   int.from_bytes(offer.provider, "big"), index)
            feasible.append((key, offer.provider, price, gpus, cached))
    expected = [(provider, price, gpus, cached) for _, provider, price, gpus, cached in sorted(feasible)[:limit]]
    fast = rank_offers(book, req, NOW, reputation=reputation, latency_ms=latency, limit=limit)
    assert [(c.offer.provider, c.price_micros_per_s, c.gpus, c.image_cached) for c in fast] == expected


def test_the_books_drawn_here_hold_feasible_offers():
    """The property above is only as strong as the share of feasible offers it sees. Measured on a fixed
    sample (derandomize): a random one of 200 books fell under the bar about once in 40 runs."""
    feasible = total = 0

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(books(), requests)
    def count(book, req):
        nonlocal feasible, total
        total += len(book)
        feasible += sum(1 for o in book if not evaluate(o, req, NOW)[2])

    count()
    assert feasible * 50 > total, (feasible, total)  # 103 of 1510 here; mutations of rank_offers are caught
