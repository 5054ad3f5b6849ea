"""The buyer's job session (node.jobsession_buyer): what it sends, countersigns and refuses."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from node.jobsession import Abort, Finish, Send, Store, Upload
from node.jobsession_buyer import BuyerSession, JobFailed
from p2p.envelope import sign_record
from p2p.errors import RemoteProtocolError
from p2p.job_wire import Cancel, Chunk, Countersign, Done, End, Fail, Log, ReceiptMsg, Start, Status
from settlement.testing import key_from_label, make_agreement, next_receipt

P, B = key_from_label("bsession-provider"), key_from_label("bsession-buyer")
_, _, AGREEMENT = make_agreement(P, B)
NOW = 1_000_000  # the buyer's monotonic clock
WALL = AGREEMENT.record.created_at_ms


def receipts(n: int, *, final_digest: bytes | None = None):
    out, prev, prev_id = [], None, AGREEMENT.record_id
    for i in range(n):
        last = i == n - 1 and final_digest is not None
        r = next_receipt(AGREEMENT, prev, prev_id, final=last)
        if last:
            r = replace(r, output_digest=final_digest)
        signed = sign_record(r, P)
        out.append(signed)
        prev, prev_id = r, signed.record_id
    return out


def running(has_image: bool = False) -> BuyerSession:
    s = BuyerSession(AGREEMENT, B, NOW, has_image=has_image)
    assert s.start(0, 0) == Send(Start(AGREEMENT.record_id, 0, 0))
    assert s.message_received(Status("need_inputs", WALL, ""), NOW, WALL) == [Upload("inputs")]
    s.transfer_done("inputs", NOW + 10)
    assert s.verifier.started_at_ms == NOW + 10  # billed time counts from the inputs' upload
    assert s.message_received(Status("running", WALL + 5, ""), NOW, WALL) == []
    assert s.outcome.started_at_ms == WALL + 5
    return s


def take(s: BuyerSession, signed, now: int):
    (store,) = s.message_received(ReceiptMsg(signed.to_bytes()), now, WALL + now - NOW)
    assert isinstance(store, Store) and store.receipt.record == signed.record and len(store.receipt.sigs) == 2
    assert s.outcome.receipts == [] or s.outcome.receipts[-1].record.seq < signed.record.seq  # not yet counted
    send = s.stored(store.receipt)
    assert send == Send(Countersign(store.receipt.to_bytes()))
    return store.receipt


def test_an_honest_job_countersigned_with_outputs_bound_by_the_final():
    outputs = b"result"
    digest = hashlib.sha256(outputs).digest()
    s = closed_with(digest, 3)
    assert s.outcome.expected_outputs == digest and s.machine.phase == "closing"
    assert s.message_received(Log("stdout", b"late line"), NOW, WALL) == []
    assert s.message_received(Chunk("outputs", outputs), NOW, WALL) == []
    assert s.message_received(End("outputs", len(outputs), digest), NOW, WALL) == []
    assert s.message_received(Done(0, False, False, "completed", len(outputs)), NOW, WALL) == [Finish("completed")]
    o = s.outcome
    assert (o.outputs, o.exit_code, o.reason, len(o.receipts), s.finished) == (outputs, 0, "completed", 3, True)
    assert s.cancel() == []  # nothing left to cancel


def test_a_receipt_billing_more_than_the_buyer_saw_is_refused_with_a_cancel():
    s = running()
    (r1,) = receipts(1)
    actions = s.message_received(ReceiptMsg(r1.to_bytes()), NOW + 10 + 200, WALL)  # 1000 ms billed, 200 seen
    assert actions[0] == Send(Cancel("receipt_refused")) and isinstance(actions[1], Abort)
    error = actions[1].error
    assert isinstance(error, JobFailed) and error.fields["reason"] == "receipt_refused"
    assert "metered_exceeds_wall" in str(error) and s.outcome.receipts == []


def test_what_fails_the_job():
    s = BuyerSession(AGREEMENT, B, NOW, has_image=False)
    s.start(0, 0)
    with pytest.raises(JobFailed) as missing:
        s.message_received(Status("need_image", WALL, ""), NOW, WALL)
    assert missing.value.fields["reason"] == "image_missing"
    s2 = BuyerSession(AGREEMENT, B, NOW, has_image=True)
    s2.start(0, 10)
    assert s2.message_received(Status("need_image", WALL, ""), NOW, WALL) == [Upload("image")]
    s2.transfer_done("image", NOW)
    with pytest.raises(JobFailed) as fail:
        s2.message_received(Fail("disk_full", "no room"), NOW, WALL)
    assert fail.value.fields["reason"] == "disk_full"
    s3 = running()
    with pytest.raises(JobFailed) as bad:
        s3.message_received(ReceiptMsg(b"\x93garbage"), NOW, WALL)
    assert bad.value.fields["reason"] == "bad_receipt"
    with pytest.raises(RemoteProtocolError):  # outside the table: the provider broke the protocol
        s3.message_received(Done(0, False, False, "completed", 0), NOW, WALL)


def closed_with(digest: bytes, n: int = 2) -> BuyerSession:
    """A session whose countersigned final names outputs of ``digest``."""
    s = running()
    for i, r in enumerate(receipts(n, final_digest=digest)):
        take(s, r, NOW + 10 + (i + 1) * 1000 + 500)
    return s


def test_outputs_that_are_not_the_finals_or_never_come_fail_the_job_with_it_as_evidence():
    digest = hashlib.sha256(b"promised").digest()
    cases = [  # (what arrives before done, the reason the job fails)
        ([], "outputs_missing"),
        ([Chunk("outputs", b"other"), End("outputs", 5, hashlib.sha256(b"other").digest())], "outputs_corrupt"),
        ([Chunk("outputs", b"promised"), End("outputs", 8, b"\0" * 32)], "outputs_corrupt"),
    ]
    for arriving, reason in cases:
        s = closed_with(digest)
        with pytest.raises(JobFailed) as failed:
            for msg in [*arriving, Done(0, False, False, "completed", 0)]:
                s.message_received(msg, NOW, WALL)
        assert failed.value.fields["reason"] == reason, arriving


def test_a_cancel_goes_out_once_per_request_while_the_job_is_on():
    s = BuyerSession(AGREEMENT, B, NOW, has_image=False)
    assert s.cancel() == []  # before the start: nothing to cancel
    s.start(0, 0)
    assert s.cancel() == [Send(Cancel("buyer_cancel"))]
    assert s.machine.phase == "preparing"
