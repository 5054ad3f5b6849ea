"""Matching (pure): which offers can run a job, in what order, and why the others cannot.

Rule 1 (order): feasible offers first; then offers that hold the buyer's image (its digest is in
``offer.images``) before those that lack it; then by price per second, then by local reputation (higher
first), then by measured latency (lower first), then by provider key bytes — a total, deterministic
order. The image comes before price because a pull or upload of a GB-sized image delays the start by
minutes, while every feasible offer is already within the buyer's max price: a few micro-credits a
second buy less than the minutes saved.
Rule 2 (explanations): every offer that is refused gets human-readable reasons ("price 120 > max 100",
"needs 24576 MiB GPU memory, has 12288", "exposure cap 2000000 > your max exposure 100000"), so a
buyer whose job matches nothing sees why, instead of a job that hangs. A feasible offer gets notes
instead (``notes``/``facts``): "image cached" or "pull 5.3 GB" (``JobRequest.pull_bytes``; "pull, size
unknown" without it), and its availability ("available until 22:00 local, preemptible, 30 s notice").
Rule 3 (one rule, two paths): ``evaluate`` is the definition of whether an offer can run a job, at
what price, on which GPUs. ``rank_offers`` is its fast path (no reasons, the checks inlined, the top
``limit`` with a heap): it must return exactly the offers ``evaluate`` finds feasible, at its price and
GPUs, in Rule 1's order; tests/market/test_matching_agree.py holds it to that for generated books. A
change to a rule goes into ``evaluate`` first, then into the fast path, and that test says if they part.
Rule 4 (images, market.negotiation Rule 4): a buyer's image is a pinned local id ``sha256:<64 hex>`` or a
registry image ``REGISTRY/REPO@sha256:<64 hex>``; both are known by their 32-byte digest
(``image_digest``), which is what ``allowed_images`` lists and ``offer.images`` holds.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo

from market.negotiation import image_allowed
from market.negotiation import image_digest as image_digest  # Rule 4; callers of matching use it from here
from market.pricing import price_per_s
from p2p.market_records import GpuSpec, Offer, ResourceRequest


@dataclass(frozen=True)
class JobRequest:
    """What the buyer asks for; not signed (the Proposal carries the signed version)."""

    resources: ResourceRequest
    max_price_micros_per_s: int
    max_duration_ms: int
    image: str
    # The most the buyer lets a provider claim beyond what it countersigned (node.buyer_config);
    # None: no limit of its own.
    max_exposure_micros: int | None = None
    # What the image would cost a provider that lacks it, when the buyer knows (a registry manifest's total
    # size, or the archive it would upload); None: unknown. Only explained (Rule 2), never ranked on.
    pull_bytes: int | None = None


@dataclass(frozen=True)
class Candidate:
    offer: Offer
    price_micros_per_s: int
    gpus: tuple[GpuSpec, ...]
    reputation: int
    latency_ms: int
    image_cached: bool = False  # Rule 1: the offer holds the buyer's image


@functools.lru_cache(maxsize=4096)
def _cc(text: str | None) -> tuple[int, ...]:
    if not text:
        return (0,)
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def gpu_fits(gpu: GpuSpec, request: ResourceRequest) -> bool:
    if request.gpu_model is not None and gpu.model != request.gpu_model:
        return False
    if gpu.memory_mib < request.min_gpu_memory_mib:
        return False
    return _cc(gpu.compute_capability) >= _cc(request.min_compute_capability)


def pick_gpus(offer: Offer, request: ResourceRequest) -> tuple[GpuSpec, ...] | None:
    """The cheapest free GPUs that fit, or None when there are not enough."""
    if request.gpus == 0:
        return ()
    fitting = [g for g in offer.free.gpus if gpu_fits(g, request)]
    if len(fitting) < request.gpus:
        return None
    if len(fitting) > request.gpus:
        prices = offer.prices.gpu_micros_per_s
        fitting.sort(key=lambda g: (prices.get(g.model, 1 << 64), g.model, g.memory_mib))
    return tuple(fitting[: request.gpus])


def evaluate(offer: Offer, request: JobRequest, now_ms: int) -> tuple[int | None, tuple[GpuSpec, ...], list[str]]:
    """(price or None, GPUs to allocate, reasons it cannot run here); feasible when reasons is empty."""
    r = request.resources
    reasons: list[str] = []
    if offer.expires_at_ms <= now_ms:
        reasons.append("offer expired")
    gpus = pick_gpus(offer, r)
    if gpus is None:
        fitting = sum(1 for g in offer.free.gpus if gpu_fits(g, r))
        what = r.gpu_model or (f"{r.min_gpu_memory_mib} MiB GPU memory" if r.min_gpu_memory_mib else "GPU")
        if r.min_gpu_memory_mib and offer.free.gpus and fitting == 0:
            best = max(g.memory_mib for g in offer.free.gpus)
            reasons.append(f"needs {r.min_gpu_memory_mib} MiB GPU memory, has {best}")
        else:
            reasons.append(f"needs {r.gpus} x {what}, {fitting} free")
    if r.cpu_millis > offer.free.cpu_millis:
        reasons.append(f"needs {r.cpu_millis / 1000:g} CPU cores, {offer.free.cpu_millis / 1000:g} free")
    if r.memory_mib > offer.free.memory_mib:
        reasons.append(f"needs {r.memory_mib} MiB memory, {offer.free.memory_mib} free")
    if r.disk_mib > offer.free.disk_mib:
        reasons.append(f"needs {r.disk_mib} MiB disk, {offer.free.disk_mib} free")
    limit_ms = offer.limits.max_duration_s * 1000
    if request.max_duration_ms > limit_ms:
        reasons.append(f"duration {request.max_duration_ms // 1000} s > provider max {offer.limits.max_duration_s} s")
    if not image_allowed(request.image, offer.limits.allowed_images):  # Rule 4
        reasons.append("image not allowed by the provider")
    cap = offer.terms.exposure_cap_micros
    if request.max_exposure_micros is not None and cap > request.max_exposure_micros:
        reasons.append(f"exposure cap {cap} > your max exposure {request.max_exposure_micros} "
                       "(micro-credits it may claim that you have not countersigned; see --max-exposure)")
    price = None
    if gpus is not None:  # without enough GPUs there is no allocation to price
        price = price_per_s(offer.prices, r, gpus)
        if price is None:
            reasons.append("provider sets no price for that GPU model")
        elif price > request.max_price_micros_per_s:
            reasons.append(f"price {price} > max {request.max_price_micros_per_s}")
    return price, gpus or (), reasons


def rank_offers(offers: Iterable[Offer], request: JobRequest, now_ms: int, *,
                reputation: Mapping[bytes, int] | None = None, latency_ms: Mapping[bytes, int] | None = None,
                limit: int = 10) -> list[Candidate]:
    """The best ``limit`` feasible offers in Rule 1's order.

    ``evaluate``'s judgement without building reasons (Rule 3), and a bounded heap instead of a sort:
    a book of 100,000 offers is ranked in tens of milliseconds (bench/market.py).
    """
    reputation = reputation or {}
    latency_ms = latency_ms or {}
    r = request.resources
    cpu, mem, n_gpus, max_price = r.cpu_millis, r.memory_mib, r.gpus, request.max_price_micros_per_s
    disk = r.disk_mib
    duration_s = -(-request.max_duration_ms // 1000)
    digest = image_digest(request.image)  # Rule 4
    allowed_as = f"sha256:{digest.hex()}" if digest is not None else None
    max_exposure = request.max_exposure_micros if request.max_exposure_micros is not None else 1 << 64
    heap: list[tuple[tuple[bool, int, int, int, int], int]] = []  # (negated order key, negated index)
    kept: dict[int, tuple[Offer, int]] = {}
    model, min_mem, min_cc = r.gpu_model, r.min_gpu_memory_mib, _cc(r.min_compute_capability)
    no_latency = 1 << 31
    for index, offer in enumerate(offers):
        free = offer.free
        if (offer.expires_at_ms <= now_ms or cpu > free.cpu_millis or mem > free.memory_mib or disk > free.disk_mib
                or len(free.gpus) < n_gpus or duration_s > offer.limits.max_duration_s
                or (offer.limits.allowed_images and allowed_as not in offer.limits.allowed_images)
                or offer.terms.exposure_cap_micros > max_exposure):
            continue
        prices = offer.prices
        price = -(-cpu * prices.cpu_core_micros_per_s // 1000) - (-mem * prices.memory_gib_micros_per_s // 1024)
        if price > max_price:
            continue
        if n_gpus:
            # Price the cheapest fitting priced GPUs; which devices they are is worked out for the winners.
            gp = prices.gpu_micros_per_s
            unit = [gp[g.model] for g in free.gpus
                    if g.model in gp and (model is None or g.model == model) and g.memory_mib >= min_mem
                    and _cc(g.compute_capability) >= min_cc]
            if len(unit) < n_gpus:
                continue
            if len(unit) > n_gpus:
                unit.sort()
            price += unit[0] if n_gpus == 1 else sum(unit[:n_gpus])
            if price > max_price:
                continue
        provider = offer.provider
        rep = reputation.get(provider, 0)
        # heapq is a min-heap: keep the ``limit`` smallest keys by pushing negated keys.
        key = (digest in offer.images, -price, rep, -latency_ms.get(provider, no_latency),
               -int.from_bytes(provider, "big"))
        item = (key, -index)
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
        else:
            continue
        kept[index] = (offer, price)
    out = []
    for _key, neg_index in sorted(heap, reverse=True):
        offer, price = kept[-neg_index]
        gpus = pick_gpus(offer, r) or ()
        out.append(Candidate(offer, price, gpus, reputation.get(offer.provider, 0),
                             latency_ms.get(offer.provider, no_latency), digest in offer.images))
    return out


def explain(offers: Iterable[Offer], request: JobRequest, now_ms: int, *, feasible: bool = False,
            tz: tzinfo | None = None) -> list[tuple[Offer, list[str]]]:
    """Every refused offer with its reasons (Rule 2); with ``feasible``, every feasible offer too, with its
    ``notes`` instead (a caller tells them apart by ``evaluate`` or by ``rank_offers``' answer)."""
    out = []
    for offer in offers:
        _, _, reasons = evaluate(offer, request, now_ms)
        if reasons:
            out.append((offer, reasons))
        elif feasible:
            out.append((offer, notes(offer, request, now_ms, tz=tz)))
    return out


def holds_image(offer: Offer, image: str) -> bool:
    """Rule 1: the offer lists the digest of ``image`` among the images its provider holds."""
    digest = image_digest(image)
    return digest is not None and digest in offer.images


def facts(offer: Offer, request: JobRequest) -> dict[str, object]:
    """Rule 2's notes as data, for --json output: whether the image is held, what fetching it would cost
    (None: unknown or nothing to fetch), and the offer's availability (``window_end_ms`` None: no end)."""
    cached = holds_image(offer, request.image)
    return {"image_cached": cached, "pull_bytes": None if cached else request.pull_bytes,
            "window_end_ms": offer.window_end_ms or None, "notice_ms": offer.notice_ms,
            "preemptible": offer.preemptible}


def notes(offer: Offer, request: JobRequest, now_ms: int, *, tz: tzinfo | None = None) -> list[str]:
    """Rule 2 for a feasible offer: "image cached" or "pull 5.3 GB" ("pull, size unknown"), then its
    availability when it has any ("available until 22:00 local, preemptible, 30 s notice"). Times are in
    ``tz`` (None: this machine's local zone)."""
    if holds_image(offer, request.image):
        out = ["image cached"]
    elif request.pull_bytes is None:
        out = ["pull, size unknown"]
    else:
        out = [f"pull {format_bytes(request.pull_bytes)}"]
    available = availability_text(offer, now_ms, tz=tz)
    if available:
        out.append(available)
    return out


def availability_text(offer: Offer, now_ms: int, *, tz: tzinfo | None = None) -> str:
    """"available until 22:00 local, preemptible, 30 s notice"; the date too when the end is a day or more
    away; "" for an offer with no scheduled end that is not preemptible."""
    parts = []
    if offer.window_end_ms:
        end = datetime.fromtimestamp(offer.window_end_ms / 1000, tz)
        when = end.strftime("%H:%M") if offer.window_end_ms - now_ms < 86_400_000 else end.strftime("%Y-%m-%d %H:%M")
        parts.append(f"available until {when} local")
    if offer.preemptible:
        parts.append(f"preemptible, {offer.notice_ms / 1000:g} s notice" if offer.notice_ms
                     else "preemptible without notice")
    return ", ".join(parts)


def format_bytes(n_bytes: int) -> str:
    """Decimal units as registries and Docker print them: 5.3 GB, 840 MB, 12 kB."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n_bytes >= size:
            value = n_bytes / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n_bytes} B"
