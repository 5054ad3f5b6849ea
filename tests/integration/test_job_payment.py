"""What a job costs when one side does not play along (issue 13, H2): outputs only after the final
receipt is countersigned, the container's real run time billed until it stops, and one rule for what
an unsigned claim is owed. Real hosts on 127.0.0.1, real Docker, real SQLite, real signatures."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import pytest
import trio

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.provider import open_provider
from node.provider_job import send_blob
from node.testing import FAST_TERMS as TERMS
from node.testing import local_setup, make_proposal
from p2p.envelope import countersign, open_signed
from p2p.framing import FramedStream
from p2p.identity import generate_key, peer_id_from_public
from p2p.job_wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_ID,
    Cancel,
    Chunk,
    Countersign,
    Done,
    End,
    ReceiptMsg,
    Start,
    Status,
    decode_message,
)
from p2p.receipt_records import Receipt
from p2p.testing import loopback_config, open_host
from sandbox.engine import Engine
from sandbox.prepare import prepare_job
from sandbox.runner import Job, open_job
from sandbox.spec import LABEL_AGREEMENT, ProviderPolicy, SandboxJob
from settlement.astore import open_store
from settlement.audit import audit, read_inputs
from settlement.billing import amount_due, unsigned_window_ms

pytestmark = pytest.mark.docker

T = TERMS.receipts
WINDOW_MS = unsigned_window_ms(T.interval_ms, T.countersign_timeout_ms, T.grace_ms)
IGNORES_SIGTERM = ("sh", "-c", "trap '' TERM; while true; do sleep 0.2; done")


@asynccontextmanager
async def _agreed(tmp_path, demo_image, command):
    """A provider (data under ``tmp_path / "provider"``) and a buyer's host on 127.0.0.1, agreed on a job
    running ``command``: (the buyer's host, the buyer's key, the deal)."""
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, list(command)))
            yield client, buyer, deal


async def _silent_buyer(client, deal, key=None, cancel_after=None, marks=None):
    """A buyer that starts the job and countersigns nothing (or, with ``key``, every receipt up to
    ``cancel_after``, then cancels and signs no more); what it was sent. ``marks["last_cosign_ns"]``:
    the wall clock when it sent its last countersignature."""
    provider = peer_id_from_public(deal.agreement.record.provider)
    framed = FramedStream(await client.open_stream(provider, PROTOCOL_ID), max_frame_bytes=MAX_FRAME_BYTES)
    await framed.send_frame(Start(deal.agreement.record_id, 0, 0).encode())
    receipts, output_frames = [], 0
    while (payload := await framed.receive_frame()) is not None:
        msg = decode_message(payload)
        if isinstance(msg, Status) and msg.phase == "need_inputs":
            await send_blob(framed, "inputs", b"")
        elif isinstance(msg, ReceiptMsg):
            receipts.append(open_signed(msg.receipt, Receipt))
            if key is not None and len(receipts) <= cancel_after:
                await framed.send_frame(Countersign(countersign(receipts[-1], key).to_bytes()).encode())
                if marks is not None:
                    marks["last_cosign_ns"] = time.time_ns()
                if len(receipts) == cancel_after:
                    await framed.send_frame(Cancel("buyer_cancel").encode())
        elif isinstance(msg, (Chunk, End)) and msg.kind == "outputs":
            output_frames += 1
        elif isinstance(msg, Done):
            return receipts, output_frames, msg
    return receipts, output_frames, None


def _container_events(docker_client, deal, since):
    """The agreement's container events since ``since`` (s): their timeNano by status, in order."""
    label = f"{LABEL_AGREEMENT}={deal.agreement.record_id.hex()}"
    events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                      filters={"label": label, "type": "container"})
    times: dict[str, list[int]] = {}
    for e in events:
        times.setdefault(e.get("status") or e.get("Action"), []).append(e["timeNano"])
    return times


async def test_a_buyer_that_never_countersigns_gets_no_outputs_and_owes_the_unsigned_claim(tmp_path, demo_image):
    command = ["sh", "-c", "echo secret > /io/out/result.txt; sleep 1"]
    async with _agreed(tmp_path, demo_image, command) as (client, buyer, deal):
        with trio.fail_after(60):
            receipts, output_frames, done = await _silent_buyer(client, deal)
    assert done is not None and done.reason == "completed" and done.output_bytes == 0
    assert output_frames == 0  # the outputs never left the provider
    final = receipts[-1].record
    assert final.state == "final" and final.output_digest is not None  # the digest still binds them
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    report = result.report
    assert report.ok, report.findings
    assert report.amount_micros == 0  # no co-signed debt ...
    price = deal.agreement.record.price_micros_per_s
    # ... and the unsigned claim, owed apart, within the rule's bound.
    assert 0 < report.unsigned_owed_micros <= min(T.exposure_cap_micros, amount_due(WINDOW_MS, price))
    assert report.unsigned_owed_micros == final.amount_micros


async def test_a_job_ignoring_sigterm_after_a_cancel_is_billed_until_it_exits(tmp_path, demo_image, docker_client):
    cancel = trio.Event()
    seen = []

    def on_receipt(r):
        seen.append(r)
        if len(seen) == 3:
            cancel.set()

    since = int(time.time()) - 1
    async with _agreed(tmp_path, demo_image, IGNORES_SIGTERM) as (client, buyer, deal), \
            open_store(tmp_path / "buyer.db") as store:
        await store.put_agreement(deal.agreement)
        with trio.fail_after(90):
            outcome = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(on_receipt=on_receipt),
                                    cancel, now_ms())
    times = _container_events(docker_client, deal, since)
    running_ms = (times["die"][-1] - times["start"][-1]) / 1e6
    assert outcome.reason == "buyer_cancel" and outcome.last.reason == "buyer_cancel"
    assert running_ms > 8000  # it sat out the stop grace (10 s), not the cancel
    assert abs(outcome.last.metered_ms - running_ms) <= T.interval_ms, (outcome.last.metered_ms, running_ms)
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert result.report.ok, result.report.findings
    assert result.report.amount_micros == outcome.last.amount_micros and result.report.unsigned_owed_micros == 0


async def test_a_stopping_job_is_never_paused_so_its_claim_runs_until_the_rules_bound(tmp_path, demo_image):
    """The buyer cancels, then signs nothing more: the job that ignores SIGTERM keeps running through
    the stop grace (10 s). Pausing it would hide that time from the meter; instead the final receipt
    claims the real run time up to what an unsigned claim may be owed (billing Rule 3)."""
    async with _agreed(tmp_path, demo_image, IGNORES_SIGTERM) as (client, buyer, deal):
        with trio.fail_after(90):
            receipts, output_frames, done = await _silent_buyer(client, deal, buyer, cancel_after=3)
    assert done is not None and done.reason == "buyer_cancel"
    cosigned, final = receipts[2].record, receipts[-1].record
    assert final.state == "final" and final.metered_ms >= cosigned.metered_ms + WINDOW_MS - T.interval_ms
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    report = result.report
    assert report.ok, report.findings
    assert report.amount_micros == cosigned.amount_micros
    assert report.unsigned_owed_micros == final.amount_micros - cosigned.amount_micros > 0


async def test_a_silent_buyers_job_is_killed_where_it_is_paused_not_thawed_for_a_graceful_stop(
        tmp_path, demo_image, docker_client):
    """A graceful stop thaws the job and, for one that ignores SIGTERM, gives the stop grace (10 s) of
    compute nobody countersigned; a buyer that never countersigns gets only what ran before the pause."""
    since = int(time.time()) - 1
    async with _agreed(tmp_path, demo_image, IGNORES_SIGTERM) as (client, buyer, deal):
        with trio.fail_after(60):
            receipts, output_frames, done = await _silent_buyer(client, deal)
    assert done is not None and done.reason == "buyer_unresponsive" and output_frames == 0
    times = _container_events(docker_client, deal, since)
    assert "pause" in times and "die" in times, times
    assert "unpause" not in times, times  # never thawed again
    running_ms = (min(times["pause"]) - min(times["start"])) / 1e6
    final = receipts[-1].record
    assert final.metered_ms <= running_ms + T.interval_ms and final.metered_ms <= WINDOW_MS
    assert final.output_digest is None  # an unresponsive buyer is offered no outputs


async def test_the_runners_own_kill_is_never_taken_for_someone_elses(demo_image, docker_client):
    """``Job.kill`` marks the kill as the runner's before sending it (runner Rule 4), and a graceful stop
    asked for afterwards neither thaws the frozen job nor waits out its grace."""
    engine, node = Engine(docker_client), f"test-{time.time_ns()}"
    since = int(time.time()) - 1
    plan = await prepare_job(engine, SandboxJob(demo_image, IGNORES_SIGTERM, max_duration_ms=30_000),
                             ProviderPolicy(stop_grace_ms=10_000), node_id=node, agreement_id="b2" * 32,
                             job_key=node[-12:])
    with trio.fail_after(60):
        async with open_job(engine, plan) as job:
            await job.start()
            await job.pause()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(job.wait)
                await job.kill()
                await job.stop()  # what the provider's stop watcher does once a stop is requested
            assert job.killed and job.result is not None
            assert not job.result.killed_externally
    events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                      filters={"container": job.id})
    actions = [e.get("Action") for e in events]
    assert "kill" in actions and "unpause" not in actions, actions


async def test_a_silent_buyers_job_ends_buyer_unresponsive_even_when_the_exit_is_seen_first(
        tmp_path, demo_image, docker_client, monkeypatch, caplog):
    """The race of the guard's kill: the runner's wait() sees the exit before the provider's tick goes
    on. Made certain here by holding the kill call until the job has exited. The end is still
    ``buyer_unresponsive``, never taken for someone else's kill (``killed_externally``)."""
    jobs: list[Job] = []
    real_start, real_call = Job.start, Engine.call

    async def start(self):
        jobs.append(self)
        await real_start(self)

    async def call(self, fn, *args, what="", **kwargs):
        result = await real_call(self, fn, *args, what=what, **kwargs)
        if what == "kill container" and jobs:
            with trio.move_on_after(20):
                await jobs[-1].exited.wait()
        return result

    monkeypatch.setattr(Job, "start", start)
    monkeypatch.setattr(Engine, "call", call)
    async with _agreed(tmp_path, demo_image, IGNORES_SIGTERM) as (client, buyer, deal):
        with trio.fail_after(60):
            receipts, output_frames, done = await _silent_buyer(client, deal)
    assert jobs and jobs[-1].result is not None and not jobs[-1].result.killed_externally
    assert not [r for r in caplog.records if "by someone else" in r.getMessage()]
    assert done is not None and done.reason == "buyer_unresponsive" and output_frames == 0
    assert receipts[-1].record.reason == "buyer_unresponsive"


async def test_a_job_ignoring_sigterm_after_a_cancel_is_killed_when_the_buyer_falls_silent(
        tmp_path, demo_image, docker_client):
    """The buyer cancels, then countersigns nothing more. The job traps SIGTERM, so the graceful stop
    would run the whole stop grace (10 s), of which the final receipt may claim only the unsigned
    window W: the guard's stop kills it at once instead. Its real run time after the last
    countersignature stays within W, give or take the guard's tick and the kill itself."""
    since = int(time.time()) - 1
    marks: dict[str, int] = {}
    async with _agreed(tmp_path, demo_image, IGNORES_SIGTERM) as (client, buyer, deal):
        with trio.fail_after(90):
            receipts, output_frames, done = await _silent_buyer(client, deal, buyer, cancel_after=3, marks=marks)
    assert done is not None and done.reason == "buyer_cancel"
    times = _container_events(docker_client, deal, since)
    assert "kill" in times and "die" in times, times
    after_ms = (max(times["die"]) - marks["last_cosign_ns"]) / 1e6
    cosigned = receipts[2].record
    after_metered_ms = (max(times["die"]) - min(times["start"])) / 1e6 - cosigned.metered_ms
    print(f"run time after the last countersignature: {after_ms:.0f} ms (past its metered point: "
          f"{after_metered_ms:.0f} ms); W = {WINDOW_MS} ms, interval {T.interval_ms} ms")
    assert after_ms <= WINDOW_MS + T.interval_ms, (after_ms, WINDOW_MS)
