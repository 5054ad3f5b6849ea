"""Matching and the images an offer holds (issue 19): a provider that holds the buyer's image ranks before
a cheaper one that lacks it (market.matching Rule 1); ``allowed_images`` admits a registry image by its
digest (Rule 4); a feasible offer's notes say "image cached" or what a pull costs, and its availability
(Rule 2). Offers are built by market.offers.build_offer, as a provider builds them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from market.matching import JobRequest, evaluate, explain, facts, format_bytes, image_digest, notes, rank_offers
from market.offers import ProviderTerms, build_offer, same_content
from p2p.market_records import MAX_OFFER_IMAGES, Limits, Prices, ReceiptTerms, ResourceRequest
from settlement.testing import key_from_label

NOW = 1_800_000_000_000
DIGEST = bytes.fromhex("ab" * 32)
OTHER = bytes.fromhex("cd" * 32)
LOCAL = "sha256:" + "ab" * 32
REMOTE = "127.0.0.1:5000/team/py@sha256:" + "ab" * 32
TERMS = ProviderTerms(Prices({}, 50, 10), Limits(3600, 2, ()), ReceiptTerms(1000, 3000, 5000, 10_000), ttl_ms=60_000)


def offer(label: str, cpu_price: int = 50, images: tuple[bytes, ...] = (), allowed: tuple[str, ...] = (),
          **availability: object):
    terms = replace(TERMS, prices=Prices({}, cpu_price, 10), limits=Limits(3600, 2, allowed))
    return build_offer(key_from_label(label).public, [], terms, [], 4000, 8192, [], 4000, 8192, 1, NOW,
                       disk_mib=8192, free_disk_mib=8192, images=images, **availability)  # type: ignore[arg-type]


def request(image: str = LOCAL, pull_bytes: int | None = None, max_price: int = 1000) -> JobRequest:
    return JobRequest(ResourceRequest(0, None, 0, None, 1000, 1024), max_price, 60_000, image, pull_bytes=pull_bytes)


def test_image_digest_of_a_local_id_and_a_registry_reference():
    assert image_digest(LOCAL) == image_digest(REMOTE) == DIGEST
    assert image_digest("127.0.0.1:5000/team/py:latest") is None and image_digest("sha256:ab") is None


def test_a_provider_holding_the_image_ranks_before_a_cheaper_one_that_lacks_it():
    cheap, holder = offer("cheap", cpu_price=10), offer("holder", cpu_price=90, images=(OTHER, DIGEST))
    for image in (LOCAL, REMOTE):  # held by digest, whichever way the buyer names it
        ranked = rank_offers([cheap, holder], request(image), NOW)
        assert [c.offer.provider for c in ranked] == [holder.provider, cheap.provider]
        assert [c.image_cached for c in ranked] == [True, False]
        assert [c.price_micros_per_s for c in ranked] == [90 + 10, 10 + 10]
    # Without the image held anywhere, price decides again.
    ranked = rank_offers([cheap, holder], request("sha256:" + "ef" * 32), NOW)
    assert [c.offer.provider for c in ranked] == [cheap.provider, holder.provider]


def test_holding_the_image_does_not_make_an_offer_feasible():
    dear = offer("dear", cpu_price=5000, images=(DIGEST,))
    assert rank_offers([dear], request(), NOW) == []
    assert explain([dear], request(), NOW) == [(dear, ["price 5010 > max 1000"])]


def test_allowed_images_admits_a_registry_image_whose_digest_is_listed():
    strict = offer("strict", allowed=(LOCAL,))
    assert evaluate(strict, request(REMOTE), NOW)[2] == []
    assert [c.offer for c in rank_offers([strict], request(REMOTE), NOW)] == [strict]
    refused = ["image not allowed by the provider"]
    for image in ("127.0.0.1:5000/team/py@sha256:" + "cd" * 32, "127.0.0.1:5000/team/py:latest"):
        assert evaluate(strict, request(image), NOW)[2] == refused
        assert rank_offers([strict], request(image), NOW) == []


def test_notes_say_cached_or_what_a_pull_costs():
    holder, lacking = offer("holder", images=(DIGEST,)), offer("lacking")
    assert notes(holder, request(pull_bytes=5_300_000_000), NOW) == ["image cached"]
    assert notes(lacking, request(pull_bytes=5_300_000_000), NOW) == ["pull 5.3 GB"]
    assert notes(lacking, request(), NOW) == ["pull, size unknown"]
    assert [format_bytes(n) for n in (999, 12_000, 840_000_000, 12_400_000_000)] == ["999 B", "12 kB", "840 MB",
                                                                                     "12 GB"]


def test_notes_state_the_availability():
    tz = timezone(timedelta(hours=8))
    now = datetime(2026, 12, 5, 18, 0, tzinfo=tz)
    end_ms = int(datetime(2026, 12, 5, 22, 0, tzinfo=tz).timestamp() * 1000)
    now_ms = int(now.timestamp() * 1000)
    windowed = offer("w", images=(DIGEST,), window_end_ms=end_ms, notice_ms=30_000, preemptible=True)
    assert notes(windowed, request(), now_ms, tz=tz) == [
        "image cached", "available until 22:00 local, preemptible, 30 s notice"]
    far = offer("far", window_end_ms=end_ms + 2 * 86_400_000, preemptible=True)
    assert notes(far, request(), now_ms, tz=tz) == [
        "pull, size unknown", "available until 2026-12-07 22:00 local, preemptible without notice"]
    assert notes(offer("always"), request(), now_ms) == ["pull, size unknown"]


def test_explain_with_feasible_gives_notes_for_feasible_offers_and_reasons_for_the_rest():
    holder, dear = offer("holder", images=(DIGEST,)), offer("dear", cpu_price=5000)
    assert explain([holder, dear], request(), NOW) == [(dear, ["price 5010 > max 1000"])]
    assert explain([holder, dear], request(), NOW, feasible=True, tz=UTC) == [
        (holder, ["image cached"]), (dear, ["price 5010 > max 1000"])]


def test_facts_are_the_notes_as_data():
    end_ms = NOW + 3_600_000
    windowed = offer("w", window_end_ms=end_ms, notice_ms=30_000, preemptible=True)
    assert facts(windowed, request(pull_bytes=123)) == {
        "image_cached": False, "pull_bytes": 123, "window_end_ms": end_ms, "notice_ms": 30_000, "preemptible": True}
    assert facts(offer("h", images=(DIGEST,)), request(pull_bytes=123)) == {
        "image_cached": True, "pull_bytes": None, "window_end_ms": None, "notice_ms": 0, "preemptible": False}


def test_build_offer_keeps_the_most_recent_images_and_a_changed_cache_is_new_content():
    many = [bytes([i]) * 32 for i in range(MAX_OFFER_IMAGES + 5)]
    built = offer("p", images=(many[0], *many))
    assert built.images == tuple(many[:MAX_OFFER_IMAGES])  # duplicates dropped, the first (newest) kept
    base = offer("p", images=(DIGEST,))
    assert same_content(base, offer("p", images=(DIGEST,)))
    assert not same_content(base, offer("p", images=(OTHER, DIGEST)))
    assert not same_content(base, offer("p", images=(DIGEST,), window_end_ms=NOW + 1))
    assert not same_content(base, offer("p", images=(DIGEST,), preemptible=True))
    assert not same_content(base, offer("p", images=(DIGEST,), notice_ms=30_000))
