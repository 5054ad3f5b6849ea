"""Clocks (issue 13, L1) with a real provider, real Docker and the real buyer: the buyer's wall clock
is offset (only the buyer's: ``node.buyer_job.wall_ms``), the provider's is the machine's."""

from __future__ import annotations

import time

import pytest
import trio

import node.buyer_job as buyer_job
from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker


async def _job(tmp_path, demo_image, hooks):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, ["sleep", "3"]))
            await store.put_agreement(deal.agreement)
            with trio.fail_after(60):
                return await run_job(client, buyer, store, deal, b"", None, hooks, trio.Event(), now_ms())


async def test_a_buyer_clock_stepping_back_5_s_mid_job_refuses_no_honest_receipt(tmp_path, demo_image, monkeypatch):
    offset = [0]
    monkeypatch.setattr(buyer_job, "wall_ms", lambda: time.time_ns() // 1_000_000 + offset[0])

    def on_receipt(receipt):
        offset[0] = -5000  # after the first receipt, NTP steps the buyer's clock back 5 s

    outcome = await _job(tmp_path, demo_image, BuyerHooks(on_receipt=on_receipt))
    assert outcome.reason == "completed" and outcome.last.state == "final" and len(outcome.receipts) >= 3
    assert outcome.clock_note == "your clock is 5 s behind the provider's"
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert result.report.ok and result.report.amount_micros == outcome.last.amount_micros


async def test_a_buyer_clock_30_s_ahead_is_named(tmp_path, demo_image, monkeypatch):
    monkeypatch.setattr(buyer_job, "wall_ms", lambda: time.time_ns() // 1_000_000 + 30_000)
    outcome = await _job(tmp_path, demo_image, BuyerHooks())
    assert outcome.reason == "completed"
    assert outcome.clock_note == "your clock is 30 s ahead of the provider's"
