"""Offers built from NVML inventory: the recorded H200 (tests/fixtures/nvml, real readings) and a
machine without any GPU."""

from __future__ import annotations

import json
from pathlib import Path

from market.matching import JobRequest, rank_offers
from market.offers import ProviderTerms, build_offer
from node.provider import offered_gpus
from p2p.market_records import Limits, Prices, ReceiptTerms, ResourceRequest
from sandbox.nvml import inventory
from settlement.testing import key_from_label

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"
TERMS = ProviderTerms(Prices({"NVIDIA H200": 2500}, 50, 10), Limits(3600, 2, ()),
                      ReceiptTerms(1000, 3000, 5000, 50_000))
KEY = key_from_label("provider")


def test_offer_from_the_recorded_h200():
    inv = inventory(json.loads((FIXTURES / "h200_idle.json").read_text()))
    gpus = offered_gpus(list(inv.gpus), TERMS)
    (gpu,) = gpus
    assert gpu.uuid == "GPU-00000000-1111-2222-3333-444444444444"
    assert (gpu.spec.model, gpu.spec.compute_capability, gpu.spec.driver_version, gpu.spec.cuda_version) == \
        ("NVIDIA H200", "9.0", "580.159.04", "13.0")
    assert gpu.spec.memory_mib == 150_754_820_096 >> 20
    offer = build_offer(KEY.public, ["/ip4/127.0.0.1/tcp/4001"], TERMS, gpus, 16_000, 65_536, [gpu.uuid], 16_000,
                        65_536, 1, 0, disk_mib=8192, free_disk_mib=8192)
    request = JobRequest(ResourceRequest(1, None, 80_000, "9.0", 4000, 8192), 5000, 600_000, "sha256:" + "a" * 64)
    (candidate,) = rank_offers([offer], request, 1)
    assert candidate.price_micros_per_s == 2500 + 200 + 80


def test_unpriced_gpu_is_not_offered():
    inv = inventory(json.loads((FIXTURES / "h200_idle.json").read_text()))
    unpriced = ProviderTerms(Prices({}, 50, 10), TERMS.limits, TERMS.receipts)
    assert offered_gpus(list(inv.gpus), unpriced) == []


def test_no_gpu_machine_offers_cpu_and_memory():
    inv = inventory({"error": "NVMLError_LibraryNotFound: NVML Shared Library Not Found", "devices": []})
    assert inv.gpus == () or inv.reason
    offer = build_offer(KEY.public, [], TERMS, offered_gpus(list(inv.gpus), TERMS), 2000, 4096, [], 2000, 4096, 1, 0)
    assert offer.capacity.gpus == () and offer.free.cpu_millis == 2000
