"""Helpers for tests and benchmarks that run providers and buyers in one process (as trio.testing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from market.offers import ProviderTerms
from market.service import now_ms
from node.provider import ProviderSetup
from p2p.envelope import Signed, sign_record
from p2p.identity import NodeKey
from p2p.market_records import JobSpec, Limits, Offer, Prices, Proposal, ReceiptTerms, ResourceRequest

# Short intervals so that pausing and stopping happen within seconds in tests.
FAST_TERMS = ProviderTerms(Prices({}, cpu_core_micros_per_s=100, memory_gib_micros_per_s=10), Limits(600, 4, ()),
                           ReceiptTerms(interval_ms=500, countersign_timeout_ms=1500, grace_ms=1500,
                                        exposure_cap_micros=1000), ttl_ms=60_000)


def local_setup(data_dir: Path, key: NodeKey, terms: ProviderTerms = FAST_TERMS) -> ProviderSetup:
    return ProviderSetup(key=key, data_dir=data_dir, terms=terms, listen=("/ip4/127.0.0.1/tcp/0",),
                         cpu_millis=2000, memory_mib=2048, shutdown_grace_s=20)


def make_proposal(buyer: NodeKey, offer: Signed[Offer], image: str, command: Sequence[str], *,
                  cpu_millis: int = 1000, memory_mib: int = 256, duration_ms: int = 60_000,
                  max_price: int = 1000, env: dict[str, str] | None = None) -> Signed[Proposal]:
    now = now_ms()
    return sign_record(Proposal(
        buyer=buyer.public, provider=offer.record.provider, offer_id=offer.record_id,
        job=JobSpec(image, None, tuple(command), env if env is not None else {"GREETING": "hello"}, None),
        resources=ResourceRequest(0, None, 0, None, cpu_millis, memory_mib), max_price_micros_per_s=max_price,
        max_duration_ms=duration_ms, terms=offer.record.terms, nonce=os.urandom(16), created_at_ms=now,
        expires_at_ms=now + 10_000), buyer)
