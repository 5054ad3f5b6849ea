"""Audit throughput against the bare floor of two Ed25519 verifications per receipt.

    .venv/bin/python bench/audit.py [--receipts 100000] [--agreements 200]

Generates co-signed receipt chains (settlement.testing), writes them as one bundle, then times in the
same run: (a) the floor — two PyNaCl verifications per receipt with cached keys, nothing else;
(b) `audit` of the bundle file on one process; (c) on every core (`--jobs`). Target: (b) >= 90 % of
(a), and near-linear speed-up with jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nacl.signing import VerifyKey  # noqa: E402

from settlement.audit import audit, read_inputs  # noqa: E402
from settlement.bundle import encode_bundle  # noqa: E402
from settlement.testing import key_from_label, make_chain  # noqa: E402


def floor_seconds(chains) -> float:
    keys = {}
    work = []
    for ev in chains:
        for r in ev.receipts:
            for i in (0, 1):
                pub = r.signer_public(i)
                key = keys.get(pub) or keys.setdefault(pub, VerifyKey(pub))
                work.append((key, r.signed_message(i), r.sigs[i]))
    start = time.perf_counter()
    for key, message, sig in work:
        key.verify(message, sig)
    return time.perf_counter() - start


def audit_seconds(path: Path, jobs: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = audit(read_inputs([path]), jobs=jobs)
    elapsed = time.perf_counter() - start
    if any(r.report.findings for r in results):
        raise SystemExit("benchmark chains did not verify")
    return elapsed, sum(r.report.receipts for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receipts", type=int, default=100_000)
    parser.add_argument("--agreements", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    per_chain = max(1, args.receipts // args.agreements)
    t0 = time.perf_counter()
    chains = []
    for i in range(args.agreements):
        provider, buyer = key_from_label(f"provider{i % 17}"), key_from_label(f"buyer{i % 29}")
        chains.append(make_chain(provider, buyer, per_chain, nonce=i.to_bytes(16, "big")))
    n = per_chain * args.agreements
    print(f"generated {n} co-signed receipts in {args.agreements} agreements ({time.perf_counter() - t0:.1f} s)")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.bundle"
        path.write_bytes(encode_bundle([c.stored() for c in chains]))
        print(f"bundle: {path.stat().st_size / 1e6:.1f} MB")
        floor = min(floor_seconds(chains) for _ in range(args.repeat))
        one = min(audit_seconds(path, 1)[0] for _ in range(args.repeat))
        many = min(audit_seconds(path, cores)[0] for _ in range(args.repeat))
    print(f"{'what':<34}{'receipts/s':>12}{'vs floor':>10}")
    print(f"{'floor: 2 PyNaCl verifies/receipt':<34}{n / floor:>12,.0f}{'100%':>10}")
    print(f"{'audit --jobs 1':<34}{n / one:>12,.0f}{floor / one:>10.0%}")
    print(f"{f'audit --jobs {cores}':<34}{n / many:>12,.0f}{floor / many:>10.0%}")
    print(f"speed-up with {cores} jobs: {one / many:.2f}x (linear would be {cores}x)")


if __name__ == "__main__":
    main()
