"""The job protocol's table (node.jobsession) through the real shells: a real provider (Docker, py-libp2p
on 127.0.0.1) and a hand-written buyer, and a hand-written provider and the real buyer.

- Messages the table does not allow from the buyer mid-job count as missing: a few are ignored and the
  job runs on to ``completed``; past 64 the provider stops listening and the exposure guard ends the job
  (``buyer_unresponsive``). Before the table they were ignored without a bound.
- A provider that says ``done`` without a final receipt ends the buyer's job as ``provider_lost``.
"""

from __future__ import annotations

import pytest
import trio

from market.service import Deal, negotiate_with, now_ms
from node.buyer_job import BuyerHooks, JobFailed, run_job
from node.jobsession_provider import MAX_BAD_FRAMES
from node.provider import open_provider
from node.provider_job import send_blob
from node.testing import local_setup, make_proposal
from p2p.envelope import countersign, open_signed
from p2p.framing import FramedStream, serve_framed
from p2p.identity import generate_key, peer_id_from_public
from p2p.job_wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_ID,
    Chunk,
    Countersign,
    Done,
    End,
    ReceiptMsg,
    Start,
    Status,
    decode_message,
)
from p2p.receipt_records import FINAL, Receipt
from p2p.testing import loopback_config, open_host
from settlement.astore import open_store
from settlement.audit import audit, read_inputs
from settlement.testing import make_agreement

STRAY = [Start(b"\1" * 32, 0, 0).encode(), Chunk("inputs", b"late").encode(),
         End("image", 0, b"\0" * 32).encode(), Done(0, False, False, "completed", 0).encode()]


async def _buyer_with_strays(client, deal, buyer, strays_per_receipt: int):
    provider = peer_id_from_public(deal.agreement.record.provider)
    framed = FramedStream(await client.open_stream(provider, PROTOCOL_ID), max_frame_bytes=MAX_FRAME_BYTES)
    await framed.send_frame(Start(deal.agreement.record_id, 0, 0).encode())
    receipts, done, sent = [], None, 0
    while done is None and (payload := await framed.receive_frame()) is not None:
        msg = decode_message(payload)
        if isinstance(msg, Status) and msg.phase == "need_inputs":
            await send_blob(framed, "inputs", b"")
        elif isinstance(msg, ReceiptMsg):
            signed = open_signed(msg.receipt, Receipt)
            receipts.append(signed)
            if signed.record.state != FINAL and sent < strays_per_receipt * 4:
                for i in range(strays_per_receipt):
                    await framed.send_frame(STRAY[(sent + i) % len(STRAY)])
                sent += strays_per_receipt
            await framed.send_frame(Countersign(countersign(signed, buyer).to_bytes()).encode())
        elif isinstance(msg, Done):
            done = msg
    return receipts, done, sent


@pytest.mark.docker
@pytest.mark.parametrize(("strays", "seconds", "reason"), [(2, "3", "completed"),
                                                          (MAX_BAD_FRAMES, "60", "buyer_unresponsive")])
async def test_messages_out_of_order_from_the_buyer_count_as_missing(tmp_path, demo_image, strays, seconds, reason):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, ["sleep", seconds]))
            with trio.fail_after(60):
                receipts, done, sent = await _buyer_with_strays(client, deal, buyer, strays)
    assert done is not None and done.reason == reason, (done, sent)
    assert receipts[-1].record.state == FINAL and receipts[-1].record.reason == reason
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok, result.report.findings


async def test_a_provider_that_says_done_without_a_final_receipt_ends_the_buyers_job(tmp_path):
    provider_key, buyer = generate_key(), generate_key()
    _, proposal, agreement = make_agreement(provider_key, buyer, now_ms())

    async def provider(framed: FramedStream) -> None:
        decode_message(await framed.receive_frame() or b"")  # start
        await framed.send_frame(Status("running", now_ms(), "").encode())
        await framed.send_frame(Done(0, False, False, "completed", 0).encode())
        await trio.sleep(5)

    handlers = {PROTOCOL_ID: serve_framed(provider, protocol=PROTOCOL_ID, stream_budget_s=30,
                                          max_frame_bytes=MAX_FRAME_BYTES)}
    async with open_host(loopback_config(provider_key, handlers=handlers)) as fake, \
            open_host(loopback_config(buyer, bootstrap=(fake.addrs()[0],))) as client, \
            open_store(tmp_path / "buyer.db") as store:
        with pytest.raises(JobFailed) as failed, trio.fail_after(30):
            await run_job(client, buyer, store, Deal(agreement, proposal), b"", None, BuyerHooks(), trio.Event(),
                          now_ms())
    assert failed.value.fields["reason"] == "provider_lost" and "'done'" in str(failed.value)
