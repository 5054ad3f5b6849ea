"""Offers built from the operator's terms and the machine's inventory, with and without GPUs."""

from __future__ import annotations

from dataclasses import replace

from market.offers import OfferedGpu, ProviderTerms, build_offer, needs_refresh
from p2p.market_records import GpuSpec, Limits, Prices, ReceiptTerms
from settlement.testing import key_from_label

TERMS = ProviderTerms(Prices({"NVIDIA H200": 700}, 50, 10), Limits(3600, 2, ()), ReceiptTerms(1000, 3000, 5000, 10_000),
                      ttl_ms=60_000)
H200 = GpuSpec("NVIDIA H200", 143_771, "9.0", "580.159.04", "13.0")
KEY = key_from_label("provider")


def test_no_gpu_machine_offers_cpu_and_memory_only():
    offer = build_offer(KEY.public, ["/ip4/127.0.0.1/tcp/1"], TERMS, [], 2000, 4096, [], 2000, 4096, 1, 1000)
    assert offer.capacity.gpus == () and offer.free.cpu_millis == 2000 and offer.expires_at_ms == 61_000


def test_free_gpus_are_the_unallocated_ones():
    gpus = [OfferedGpu("GPU-a", H200), OfferedGpu("GPU-b", replace(H200, memory_mib=1))]
    offer = build_offer(KEY.public, [], TERMS, gpus, 16_000, 65_536, ["GPU-b"], 8000, 1024, 7, 0)
    assert len(offer.capacity.gpus) == 2 and offer.free.gpus == (gpus[1].spec,)
    assert "GPU-a" not in repr(offer)  # UUIDs are never published


def test_refresh_on_change_and_at_half_life():
    a = build_offer(KEY.public, [], TERMS, [], 2000, 4096, [], 2000, 4096, 1, 0)
    same = build_offer(KEY.public, [], TERMS, [], 2000, 4096, [], 2000, 4096, 2, 10_000)
    changed = build_offer(KEY.public, [], TERMS, [], 2000, 4096, [], 1000, 4096, 2, 10_000)
    assert needs_refresh(None, a, 0)
    assert not needs_refresh(a, same, 10_000)
    assert needs_refresh(a, changed, 10_000)
    assert needs_refresh(a, same, 30_000)
