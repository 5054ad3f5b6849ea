"""Market benchmarks: ranking a large order book, and a negotiation round trip between two processes.

    .venv/bin/python bench/market.py [--offers 100000] [--rounds 300]

Prints the time to rank N offers for a CPU-only and a GPU request (target < 100 ms for 100,000), and
the proposal -> confirmed countersigned agreement round trip between a buyer process and a provider
process on 127.0.0.1, p50/p99 (target p50 < 20 ms). The provider stores each agreement in its SQLite
file before confirming, as the daemon does.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from market.matching import JobRequest, rank_offers  # noqa: E402
from p2p.envelope import sign_record  # noqa: E402
from p2p.market_records import Capacity, GpuSpec, JobSpec, Prices, Proposal, ResourceRequest  # noqa: E402
from settlement.testing import DEMO_IMAGE, TERMS, key_from_label, make_offer  # noqa: E402

NOW = 1_800_000_000_000


def make_book(n: int) -> list:
    base = make_offer(key_from_label("x"), NOW)
    models = [GpuSpec(f"GPU {i}", 8192 * (1 + i % 4), f"{7 + i % 3}.{i % 2}", "550.54", "12.4") for i in range(8)]
    rng = random.Random(1)
    offers = []
    for i in range(n):
        gpus = tuple(rng.choice(models) for _ in range(rng.choice((0, 0, 1, 2, 4))))
        cap = Capacity(gpus, rng.choice((2000, 4000, 8000, 16000)), rng.choice((4096, 8192, 32768)), 65536)
        prices = Prices({m.model: rng.randint(100, 900) for m in models}, rng.randint(5, 100), rng.randint(1, 20))
        offers.append(replace(base, provider=i.to_bytes(32, "big"), capacity=cap, free=cap, prices=prices))
    return offers


def bench_ranking(n: int) -> None:
    offers = make_book(n)
    for label, req in (("CPU-only request", ResourceRequest(0, None, 0, None, 2000, 4096)),
                       ("1 GPU >= 16 GiB, cc >= 8.0", ResourceRequest(1, None, 16384, "8.0", 2000, 4096))):
        job = JobRequest(req, 2000, 600_000, DEMO_IMAGE)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            top = rank_offers(offers, job, NOW + 1)
            times.append(time.perf_counter() - start)
        print(f"rank {n:,} offers, {label:<28} best {min(times) * 1000:7.1f} ms  median "
              f"{statistics.median(times) * 1000:7.1f} ms  (top {len(top)})")


SERVE = """
import sys, trio
from market.capacity import CapacityLedger
from market.service import ProviderMarket, now_ms
from p2p.negotiate_wire import PROTOCOL_ID
from p2p.envelope import sign_record
from p2p.framing import serve_framed
from p2p.testing import loopback_config, open_host
from settlement.store import Store
from settlement.testing import key_from_label, make_offer
from dataclasses import replace

key = key_from_label("bench-provider")
store = Store(sys.argv[1])

async def on_agreement(agreement, proposal, allocation):
    await trio.to_thread.run_sync(store.put_agreement, agreement)
    market.ledger.release(agreement.record_id)

async def main():
    global market
    market = ProviderMarket(key, CapacityLedger((), 10**9, 10**9, 10**9), [], on_agreement)
    offer = sign_record(replace(make_offer(key, now_ms()), expires_at_ms=now_ms() + 3_600_000), key)
    market.publish(offer)
    cfg = loopback_config(key, handlers={PROTOCOL_ID: serve_framed(market.handle, protocol=PROTOCOL_ID,
                                                                   stream_budget_s=30)})
    async with open_host(cfg) as node:
        print(node.addrs()[0], offer.to_bytes().hex(), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def bench_negotiation(rounds: int) -> None:
    import trio

    from market.service import negotiate_with, now_ms
    from p2p.envelope import open_signed
    from p2p.market_records import Offer
    from p2p.testing import loopback_config, open_host

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, os.path.join(tmp, "provider.db")],
                                stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        try:
            addr, offer_hex = proc.stdout.readline().split()  # type: ignore[union-attr]
            offer = open_signed(bytes.fromhex(offer_hex), Offer)
            buyer = key_from_label("bench-buyer")
            provider_id = addr.rsplit("/", 1)[1]

            async def run() -> list[float]:
                samples = []
                async with open_host(loopback_config(buyer, bootstrap=(addr,))) as node:
                    for i in range(rounds + 10):
                        now = now_ms()
                        proposal = sign_record(Proposal(
                            buyer=buyer.public, provider=offer.record.provider, offer_id=offer.record_id,
                            job=JobSpec(DEMO_IMAGE, None, ("true",), {}, None),
                            resources=ResourceRequest(0, None, 0, None, 1000, 512), max_price_micros_per_s=10_000,
                            max_duration_ms=60_000, terms=TERMS, nonce=os.urandom(16), created_at_ms=now,
                            expires_at_ms=now + 10_000), buyer)
                        start = time.perf_counter()
                        with trio.fail_after(10):
                            await negotiate_with(node, provider_id, buyer, proposal)
                        if i >= 10:  # warm-up excluded
                            samples.append(time.perf_counter() - start)
                return samples

            samples = sorted(trio.run(run))
        finally:
            proc.kill()
            proc.wait()
    p50 = samples[len(samples) // 2] * 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
    print(f"negotiation round trip, 2 processes, {len(samples)} rounds: p50 {p50:.1f} ms  p99 {p99:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offers", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    bench_ranking(args.offers)
    bench_negotiation(args.rounds)


if __name__ == "__main__":
    main()
