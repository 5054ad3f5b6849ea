"""One job end to end in one process: real hosts on 127.0.0.1, real Docker, real SQLite, both sides'
databases audited."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import replace

import pytest
import trio

from market.offers import ProviderTerms
from market.records import JobSpec, Limits, Prices, Proposal, ReceiptTerms, ResourceRequest
from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, JobFailed, pack_dir, run_job
from node.provider import ProviderSetup, open_provider
from p2p.envelope import sign_record
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker

TERMS = ProviderTerms(Prices({}, cpu_core_micros_per_s=100, memory_gib_micros_per_s=10), Limits(600, 4, ()),
                      ReceiptTerms(interval_ms=500, countersign_timeout_ms=1500, grace_ms=1500,
                                   exposure_cap_micros=1000), ttl_ms=60_000)


def setup_for(tmp_path, key):
    return ProviderSetup(key=key, data_dir=tmp_path / "provider", terms=TERMS, listen=("/ip4/127.0.0.1/tcp/0",),
                         cpu_millis=2000, memory_mib=2048, shutdown_grace_s=20)


def proposal(buyer, offer_signed, image, command, terms=TERMS.receipts, duration_ms=60_000):
    now = now_ms()
    return sign_record(Proposal(
        buyer=buyer.public, provider=offer_signed.record.provider, offer_id=offer_signed.record_id,
        job=JobSpec(image, None, tuple(command), {"GREETING": "hello"}, None),
        resources=ResourceRequest(0, None, 0, None, 1000, 256), max_price_micros_per_s=1000,
        max_duration_ms=duration_ms, terms=terms, nonce=os.urandom(16), created_at_ms=now,
        expires_at_ms=now + 10_000), buyer)


async def test_a_job_runs_is_billed_and_both_databases_audit_clean(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "x.txt").write_bytes(b"input bytes\n" * 100)
    lines, statuses = [], []
    hooks = BuyerHooks(on_log=lambda s, d: lines.append((s, d)), on_status=lambda p, d: statuses.append(p))
    command = ["sh", "-c", "echo $GREETING; wc -l < /io/in/x.txt; echo oops >&2; cp /io/in/x.txt /io/out/y.txt;"
               " sleep 2; echo bye"]
    async with open_provider(setup_for(tmp_path, provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            with trio.fail_after(60):
                deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                            proposal(buyer, runtime.offer, demo_image, command))
                await store.put_agreement(deal.agreement)
                outcome = await run_job(client, buyer, store, deal, pack_dir(inputs), None, hooks, trio.Event(),
                                        now_ms())
        assert runtime.services.active == {}
    assert outcome.exit_code == 0 and outcome.reason == "completed"
    assert [d for s, d in lines if s == "stdout"] == [b"hello", b"100", b"bye"]
    assert (b"oops" in [d for s, d in lines if s == "stderr"])
    with tarfile.open(fileobj=io.BytesIO(outcome.outputs)) as tar:
        names = tar.getnames()
        assert any(n.endswith("y.txt") for n in names)
    final = outcome.last
    assert final.state == "final" and final.reason == "completed" and 2000 <= final.metered_ms <= 6000
    assert len(outcome.receipts) >= 3 and "running" in statuses
    results = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    (result,) = results
    assert result.report.ok, result.report.findings
    assert result.report.amount_micros == final.amount_micros and result.report.state == "final:completed"


async def test_unknown_image_fails_clearly_and_the_chain_closes(tmp_path, docker_client):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(setup_for(tmp_path, provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            with trio.fail_after(60):
                deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                            proposal(buyer, runtime.offer, "sha256:" + "0" * 64, ["true"]))
                with pytest.raises(JobFailed, match="image"):
                    await run_job(client, buyer, store, deal, b"", None, BuyerHooks(), trio.Event(), now_ms())
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok and result.report.amount_micros == 0
