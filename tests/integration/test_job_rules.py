"""The receipt loop's rules with a real container: a silent buyer, a lying buyer, a cancelling buyer,
two buyers at once, and billing against Docker's own clock."""

from __future__ import annotations

import hashlib
import time

import pytest
import trio

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.provider import open_provider
from node.provider_job import send_blob
from node.testing import FAST_TERMS as TERMS
from node.testing import local_setup, make_proposal
from p2p.envelope import Signed, countersign, open_signed
from p2p.errors import RemoteProtocolError
from p2p.framing import FramedStream
from p2p.identity import generate_key, peer_id_from_public
from p2p.job_wire import MAX_FRAME_BYTES, PROTOCOL_ID, Countersign, Done, ReceiptMsg, Start, Status, decode_message
from p2p.receipt_records import Receipt
from p2p.testing import loopback_config, open_host, wait_until
from sandbox.spec import LABEL_AGREEMENT
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker


async def _deal(runtime, client, buyer, image, command):
    return await negotiate_with(client, runtime.setup.key.peer_id, buyer,
                                make_proposal(buyer, runtime.offer, image, command))


async def _raw_job(client, deal, on_receipt):
    """A hand-written buyer: starts the job, then lets ``on_receipt`` decide what to answer."""
    provider = peer_id_from_public(deal.agreement.record.provider)
    framed = FramedStream(await client.open_stream(provider, PROTOCOL_ID), max_frame_bytes=MAX_FRAME_BYTES)
    await framed.send_frame(Start(deal.agreement.record_id, 0, 0).encode())
    statuses, receipts = [], []
    while (payload := await framed.receive_frame()) is not None:
        msg = decode_message(payload)
        if isinstance(msg, Status):
            statuses.append(msg.phase)
            if msg.phase == "need_inputs":
                await send_blob(framed, "inputs", b"")
        elif isinstance(msg, ReceiptMsg):
            signed = open_signed(msg.receipt, Receipt)
            receipts.append(signed)
            await on_receipt(framed, signed)
        elif isinstance(msg, Done):
            return statuses, receipts, msg
    return statuses, receipts, None


async def test_silent_buyer_is_paused_then_stopped_within_the_cap(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    answered = []

    async def answer_twice(framed, signed):
        if len(answered) < 2:
            answered.append(signed)
            await framed.send_frame(Countersign(countersign(signed, buyer).to_bytes()).encode())

    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "600"])
            start = time.monotonic()
            with trio.fail_after(60):
                statuses, receipts, done = await _raw_job(client, deal, answer_twice)
            elapsed = time.monotonic() - start
    t = TERMS.receipts
    assert "paused" in statuses and done.reason == "buyer_unresponsive"
    assert elapsed < 2 * (t.interval_ms + t.countersign_timeout_ms + t.grace_ms) / 1000 + 15
    final = receipts[-1].record
    assert final.reason == "buyer_unresponsive"
    assert final.amount_micros <= answered[-1].record.amount_micros + t.exposure_cap_micros
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok, result.report.findings
    # The co-signed debt, and apart from it the unsigned claim, owed within billing Rule 3.
    assert result.report.amount_micros == answered[-1].record.amount_micros
    assert result.report.unsigned_owed_micros == final.amount_micros - answered[-1].record.amount_micros > 0


async def test_forged_and_malformed_countersignatures_count_as_missing(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()

    async def lie(framed, signed):
        if signed.record.seq % 2:
            await framed.send_frame(b"\x93garbage")  # not even a record
        else:
            forged = Signed(signed.body, signed.record, (signed.sigs[0], bytes(64)))
            await framed.send_frame(Countersign(forged.to_bytes()).encode())

    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "600"])
            with trio.fail_after(60):
                statuses, receipts, done = await _raw_job(client, deal, lie)
    assert done.reason == "buyer_unresponsive" and "paused" in statuses
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok and result.report.amount_micros <= TERMS.receipts.exposure_cap_micros


async def test_cancel_ends_with_buyer_cancel_on_both_sides_and_no_container(tmp_path, demo_image, docker_client):
    provider_key, buyer = generate_key(), generate_key()
    cancel = trio.Event()
    seen = []

    def on_receipt(r):
        seen.append(r)
        if len(seen) == 2:
            cancel.set()

    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "600"])
            await store.put_agreement(deal.agreement)
            with trio.fail_after(60):
                outcome = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(on_receipt=on_receipt),
                                        cancel, now_ms())
    assert outcome.reason == "buyer_cancel" and outcome.last.reason == "buyer_cancel"
    label = f"{LABEL_AGREEMENT}={deal.agreement.record_id.hex()}"
    assert docker_client.api.containers(all=True, filters={"label": label}) == []
    for db in ("provider/node.db", "buyer.db"):
        (result,) = audit(read_inputs([tmp_path / db]))
        assert result.report.ok and result.report.state == "final:buyer_cancel", (db, result.report.findings)


async def test_two_buyers_at_once_have_their_own_chains(tmp_path, demo_image):
    provider_key = generate_key()
    outcomes = {}

    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async def one(name):
            buyer = generate_key()
            async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                    open_store(tmp_path / f"{name}.db") as store:
                deal = await _deal(runtime, client, buyer, demo_image, ["sh", "-c", f"echo {name}; sleep 2"])
                await store.put_agreement(deal.agreement)
                outcomes[name] = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(), trio.Event(),
                                               now_ms())

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "alice")
                nursery.start_soon(one, "bob")
    ids = {o.last.agreement_id for o in outcomes.values()}
    assert len(ids) == 2 and all(o.reason == "completed" for o in outcomes.values())
    results = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "alice.db", tmp_path / "bob.db"]))
    assert len(results) == 2 and all(r.report.ok for r in results)


async def test_billing_matches_dockers_own_start_and_die_times(tmp_path, demo_image, docker_client):
    provider_key, buyer = generate_key(), generate_key()
    since = int(time.time()) - 1
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "3"])
            await store.put_agreement(deal.agreement)
            with trio.fail_after(60):
                outcome = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(), trio.Event(), now_ms())
    label = f"{LABEL_AGREEMENT}={deal.agreement.record_id.hex()}"
    events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                      filters={"label": label, "type": "container"})
    times = {e["status"]: e["timeNano"] for e in events if e.get("status") in ("start", "die")}
    running_ms = (times["die"] - times["start"]) / 1e6
    billed = outcome.last.metered_ms
    assert abs(billed - running_ms) <= TERMS.receipts.interval_ms, (billed, running_ms)
    assert hashlib.sha256(outcome.outputs).digest() == outcome.last.output_digest


async def test_graceful_shutdown_ends_running_jobs_with_a_final_receipt(tmp_path, demo_image, docker_client):
    provider_key, buyer = generate_key(), generate_key()
    result = {}
    async with open_host(loopback_config(buyer)) as client, open_store(tmp_path / "buyer.db") as store:
        async with trio.open_nursery() as nursery:
            async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
                await client.connect(runtime.node.addrs()[0])
                deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "600"])
                await store.put_agreement(deal.agreement)
                running = trio.Event()

                async def buy():
                    hooks = BuyerHooks(on_receipt=lambda r: running.set())
                    result["outcome"] = await run_job(client, buyer, store, deal, b"", None, hooks, trio.Event(),
                                                      now_ms())

                nursery.start_soon(buy)
                with trio.fail_after(30):
                    await running.wait()
            # Leaving open_provider is the daemon's SIGTERM path: stop taking work, end jobs, withdraw.
            assert not runtime.accepting and runtime.offer.record.free.cpu_millis == 0
    outcome = result["outcome"]
    assert outcome.reason == "provider_shutdown" and outcome.last.reason == "provider_shutdown"
    label = f"{LABEL_AGREEMENT}={deal.agreement.record_id.hex()}"
    assert docker_client.api.containers(all=True, filters={"label": label}) == []
    results = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert [r.report.ok for r in results] == [True] and results[0].report.state == "final:provider_shutdown"


async def test_offer_seq_survives_a_restart(tmp_path, docker_client):
    key = generate_key()
    async with open_provider(local_setup(tmp_path / "provider", key)) as runtime:
        first = runtime.offer.record.seq
        runtime.changed.set()
        await runtime.publish_if_needed(None, force=True)
        last = runtime.offer.record.seq
    async with open_provider(local_setup(tmp_path / "provider", key)) as runtime:
        assert runtime.offer.record.seq > last > first


async def test_an_error_inside_the_running_job_still_ends_the_chain_and_frees_capacity(tmp_path, demo_image,
                                                                                         monkeypatch):
    from node.provider_job import JobRun
    from p2p.errors import StoreError

    original = JobRun.take_countersignature
    calls = []

    async def failing_once(self, data):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("disk full (injected)")
        await original(self, data)

    monkeypatch.setattr(JobRun, "take_countersignature", failing_once)
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await _deal(runtime, client, buyer, demo_image, ["sleep", "30"])
            await store.put_agreement(deal.agreement)
            with trio.fail_after(60):
                outcome = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(), trio.Event(), now_ms())
            await trio.sleep(0.5)
            assert runtime.services.active == {} and runtime.ledger.free().cpu_millis == runtime.ledger.cpu_millis
    assert outcome.reason == "provider_fault" and outcome.last.reason == "provider_fault"
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert result.report.ok, result.report.findings


async def test_a_buyer_that_stalls_holds_nothing(tmp_path, demo_image, monkeypatch):
    import node.provider_job as pj

    monkeypatch.setattr(pj, "START_TIMEOUT_S", 1.0)
    monkeypatch.setattr(pj, "UPLOAD_ALLOWANCE_S", 1.0)
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            # 1. A stream that never says which agreement it is for is cut off.
            framed = FramedStream(await client.open_stream(provider_key.peer_id, PROTOCOL_ID))
            with trio.fail_after(10):
                try:
                    while await framed.receive_frame() is not None:
                        pass
                except RemoteProtocolError:
                    pass  # reset rather than closed: cut off either way
            # 2. A job whose inputs never arrive is closed and its capacity released.
            deal = await _deal(runtime, client, buyer, demo_image, ["true"])
            framed = FramedStream(await client.open_stream(provider_key.peer_id, PROTOCOL_ID),
                                  max_frame_bytes=MAX_FRAME_BYTES)
            await framed.send_frame(Start(deal.agreement.record_id, 1 << 20, 0).encode())  # 1 MiB promised
            await wait_until(lambda: not runtime.services.active, timeout_s=30)
            assert runtime.ledger.free().cpu_millis == runtime.ledger.cpu_millis
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok and result.report.amount_micros == 0 and result.report.state.startswith("final:")
