"""The provider's job session (node.jobsession_provider): events in, actions out, time passed in."""

from __future__ import annotations

import hashlib

import pytest

from node.jobsession import OWNER_RETURNED, Kill, Pause, Resume, Send, Stop, Store
from node.jobsession_provider import MAX_BAD_FRAMES, ProviderSession
from p2p.envelope import Signed, countersign
from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.job_wire import Cancel, Done, Fail, ReceiptMsg, Start, Status
from p2p.receipt_records import (
    BUYER_CANCEL,
    BUYER_UNRESPONSIVE,
    COMPLETED,
    DEADLINE,
    KILLED_EXTERNALLY,
    PROVIDER_FAULT,
    PROVIDER_SHUTDOWN,
)
from sandbox.metering import MeterSample
from settlement.chain import verify_chain
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("session-provider"), key_from_label("session-buyer")
_, _, AGREEMENT = make_agreement(P, B)
T = AGREEMENT.record.terms  # 1 s receipts, 3 s countersign timeout, 5 s grace
WALL0 = AGREEMENT.record.created_at_ms + 100


def sample(wall_ms: int) -> MeterSample:
    return MeterSample(seq=wall_ms // 1000, state="running", wall_ms=wall_ms, cpu_core_ms=wall_ms // 2,
                       mem_peak_bytes=1 << 20, gpu_mem_peak_bytes=0, gpu_sm_pct_ms=0, energy_mj=0)


class Shell:
    """Performs the session's actions as provider_job does, recording them (a fake for the pure core)."""

    def __init__(self) -> None:
        self.s = ProviderSession(AGREEMENT, P)
        self.sent: list[object] = []
        self.done: list[object] = []
        self.stored: list[Signed] = []

    def perform(self, actions, now_ms: int = 0) -> list[object]:
        out = []
        for action in actions:
            if isinstance(action, Store):
                self.stored.append(action.receipt)
                out += self.perform(self.s.stored(action.receipt, now_ms), now_ms)
            elif isinstance(action, Send):
                self.sent.append(action.message)
            else:
                self.done.append(action)
                out.append(action)
        return out

    def running(self) -> ProviderSession:
        self.s.start_received()
        self.perform([self.s.status("need_inputs", WALL0)])
        self.s.transfer_done("inputs")
        self.perform([self.s.status("running", WALL0)])
        return self.s

    def tick(self, t_ms: int, **kw) -> list[object]:
        flags = {"exited": False, "killed": False, **kw}
        return self.perform(self.s.meter_sampled(sample(t_ms), t_ms, WALL0 + t_ms, **flags), t_ms)

    def receipts(self) -> list[Signed]:
        return [r for r in self.stored if len(r.sigs) == 1]

    def cosign(self, seq: int, now_ms: int = 0) -> list[object]:
        mine = next(r for r in self.receipts() if r.record.seq == seq)
        return self.perform(self.s.countersignature_received(countersign(mine, B).to_bytes()), now_ms)


def test_a_receipt_is_issued_and_sent_only_once_stored():
    shell = Shell()
    s = shell.running()
    (store,) = s.meter_sampled(sample(1000), 1000, WALL0 + 1000, exited=False, killed=False)
    assert isinstance(store, Store) and s.issuer.last is None and s.guard.pending == 0  # not yet counted
    (send,) = s.stored(store.receipt, 1001)
    assert isinstance(send, Send) and send.message == ReceiptMsg(store.receipt.to_bytes())
    assert s.issuer.last == store.receipt.record and s.guard.pending == 1


def test_no_receipt_for_the_first_few_milliseconds_nor_for_time_already_billed():
    shell = Shell()
    shell.running()
    assert shell.tick(3) == [] and shell.receipts() == []
    shell.tick(1000)
    shell.tick(1000)
    assert [r.record.metered_ms for r in shell.receipts()] == [1000]


def test_a_late_countersignature_pauses_and_its_arrival_resumes():
    shell = Shell()
    shell.running()
    shell.tick(1000)
    assert shell.tick(1000 + T.countersign_timeout_ms + 1) == [Pause("countersignature_late")]
    assert shell.s.paused == {"countersignature_late"}
    assert shell.tick(1000 + T.countersign_timeout_ms + 2) == []  # paused already
    shell.cosign(1)
    assert shell.tick(6000) == [Resume()] and shell.s.paused == set()


def test_the_guards_resume_does_not_undo_the_owners_pause():
    """Issue 14, item 1: pausing is a set of reasons."""
    shell = Shell()
    s = shell.running()
    shell.tick(1000)
    assert shell.perform(s.pause_requested(OWNER_RETURNED)) == [Pause(OWNER_RETURNED)]
    assert shell.tick(1000 + T.countersign_timeout_ms + 1) == []  # frozen already: one more reason
    assert s.paused == {OWNER_RETURNED, "countersignature_late"}
    shell.cosign(1)
    assert shell.tick(6000) == [] and s.paused == {OWNER_RETURNED}  # the guard's RESUME: still the owner's
    assert s.pause_lifted(OWNER_RETURNED) == [Resume()]
    # And the other way round: the owner leaving does not thaw a job its buyer left behind.
    assert shell.tick(7000 + T.countersign_timeout_ms + 1) == [Pause("countersignature_late")]
    assert s.pause_requested(OWNER_RETURNED) == [] and s.pause_lifted(OWNER_RETURNED) == []
    assert s.paused == {"countersignature_late"}
    assert s.pause_lifted("not a reason") == []


def test_a_silent_buyer_is_killed_after_the_grace_and_offered_no_outputs():
    shell = Shell()
    s = shell.running()
    shell.tick(1000)
    late = 1000 + T.countersign_timeout_ms + 1
    shell.tick(late)
    assert shell.tick(late + T.grace_ms) == []  # paused, within the grace
    acts = shell.tick(late + T.grace_ms + 1)
    assert acts == [Kill("buyer unresponsive past the grace")] and s.stop_reason == BUYER_UNRESPONSIVE
    assert shell.tick(late + T.grace_ms + 2, killed=True) == []  # killed once
    final = s.finish(ran=True, timed_out=False, exit_code=137, outputs_digest=b"\1" * 32, last=sample(2000),
                     wall_ms=WALL0 + 9000)
    shell.perform([final])
    assert final.receipt.record.reason == BUYER_UNRESPONSIVE and final.receipt.record.output_digest is None
    assert not s.awaits_final_countersignature and not s.may_deliver_outputs()
    assert final.receipt.record.metered_ms <= s.guard.unsigned_ceiling_ms()


def test_a_stopping_job_is_never_paused_but_killed_before_it_runs_past_the_unsigned_ceiling():
    shell = Shell()
    s = shell.running()
    shell.tick(1000)
    assert s.stop_requested(PROVIDER_SHUTDOWN) == [Stop(PROVIDER_SHUTDOWN)]
    late = 1000 + T.countersign_timeout_ms + 1
    assert shell.tick(late) == [] and s.paused == set()  # PAUSE while stopping: not frozen, metered on
    ceiling = s.guard.unsigned_ceiling_ms()
    interval = T.interval_ms
    last_ok = ceiling - interval - interval // 2
    assert shell.tick(last_ok) == []
    assert shell.tick(last_ok + 1) == [Kill("still running past what is countersigned, while stopping")]
    assert s.stop_reason == PROVIDER_SHUTDOWN  # the first reason stays


def test_the_first_stop_reason_is_the_final_reason():
    s = Shell().running()
    assert s.final_reason(ran=True, timed_out=False) == COMPLETED
    assert s.final_reason(ran=True, timed_out=True) == DEADLINE
    assert s.final_reason(ran=False, timed_out=False) == PROVIDER_FAULT
    s.container_exited(killed_externally=False)
    assert s.stop_reason is None
    assert s.message_received(Cancel("buyer_cancel")) == [Stop(BUYER_CANCEL)]
    assert s.stop_requested(PROVIDER_SHUTDOWN) == [Stop(BUYER_CANCEL)]
    s.container_exited(killed_externally=True)
    assert s.final_reason(ran=True, timed_out=True) == BUYER_CANCEL


def test_an_external_kill_is_never_completed():
    s = Shell().running()
    s.container_exited(killed_externally=True)
    assert s.final_reason(ran=True, timed_out=False) == KILLED_EXTERNALLY


def test_countersignatures_count_once_stored_and_anything_else_is_missing():
    shell = Shell()
    s = shell.running()
    shell.tick(1000)
    shell.tick(2000)
    r1, r2 = shell.receipts()
    good = countersign(r2, B).to_bytes()
    (store,) = s.countersignature_received(good)
    assert isinstance(store, Store) and s.guard.cosigned_seq == 0  # Rule 1: counted once stored
    assert s.stored(store.receipt, 2500) == [] and s.guard.cosigned_seq == 2
    assert s.countersignature_received(good) == []  # already counted
    assert s.countersignature_received(countersign(r1, B).to_bytes()) == []  # older: covered
    assert s.bad_frames == 0
    forged = Signed(r2.body, r2.record, (r2.sigs[0], bytes(64))).to_bytes()
    by_stranger = Signed(r2.body, r2.record, (r2.sigs[0], key_from_label("someone else").sign(
        countersign(r2, B).signed_message(1)))).to_bytes()
    bad = [forged, r2.to_bytes(), b"\x93garbage", by_stranger]
    for data in bad:
        assert s.countersignature_received(data) == []
    assert s.bad_frames == len(bad)
    assert s.message_received(Start(b"\0" * 32, 0, 0)) == [] and s.bad_frames == len(bad) + 1
    with pytest.raises(RemoteProtocolError):
        for _ in range(MAX_BAD_FRAMES):
            s.countersignature_received(b"\x90")
    assert s.bad_frames == MAX_BAD_FRAMES + 1


def test_a_full_run_gives_a_chain_that_verifies_and_outputs_only_after_the_final_is_countersigned():
    shell = Shell()
    s = shell.running()
    for t in (1000, 2000, 3000):
        shell.tick(t)
        shell.cosign(t // 1000)
    outputs = b"out"
    shell.perform([s.finish(ran=True, timed_out=False, exit_code=0, outputs_digest=hashlib.sha256(outputs).digest(),
                            last=sample(3400), wall_ms=WALL0 + 3400)])
    final = s.final
    assert final is not None and final.record.reason == COMPLETED and s.awaits_final_countersignature
    assert not s.may_deliver_outputs()
    shell.cosign(final.record.seq)
    assert s.final_cosigned and not s.awaits_final_countersignature and s.may_deliver_outputs()
    s.transfer_done("outputs")
    shell.perform([s.done(0, False, False, len(outputs))])
    assert shell.sent[-1] == Done(0, False, False, COMPLETED, 3) and s.machine.phase == "done"
    assert s.closing(WALL0 + 9999) is final  # the chain is closed already
    chain = [countersign(r, B) for r in shell.receipts()]
    assert verify_chain(AGREEMENT, chain).ok
    assert [type(m).__name__ for m in shell.sent].count("ReceiptMsg") == 4


def test_a_job_that_cannot_start_says_why_and_claims_nothing():
    shell = Shell()
    s = shell.s
    s.start_received()
    shell.perform(s.cannot_start("disk_full", "no room", WALL0))
    fail, receipt = shell.sent
    assert fail == Fail("disk_full", "no room") and isinstance(receipt, ReceiptMsg)
    (final,) = shell.receipts()
    assert final.record.state == "final" and final.record.amount_micros == 0 and final.record.reason == PROVIDER_FAULT
    assert s.machine.phase == "closed"
    with pytest.raises(LocalProtocolError):
        s.status("running", WALL0)


def test_the_closing_receipt_claims_only_what_was_countersigned():
    shell = Shell()
    s = shell.running()
    shell.tick(1000)
    shell.cosign(1)
    shell.tick(2000)  # not countersigned
    s.stop_requested(PROVIDER_SHUTDOWN)
    store = s.closing(WALL0 + 5000)
    assert isinstance(store, Store)
    r = store.receipt.record
    assert (r.seq, r.state, r.reason, r.metered_ms) == (3, "final", PROVIDER_SHUTDOWN, 1000)
    s.closing_stored(store.receipt)
    assert s.closing(WALL0 + 6000) == store.receipt
    r1, r2 = shell.receipts()
    report = verify_chain(AGREEMENT, [countersign(r1, B), r2, store.receipt])  # as the provider holds it
    assert report.ok and report.amount_micros == r1.record.amount_micros


def test_statuses_follow_the_table():
    s = Shell().s
    with pytest.raises(LocalProtocolError):
        s.status("need_inputs", WALL0)  # before the buyer's start
    s.start_received()
    assert s.status("need_inputs", WALL0, "x") == Send(Status("need_inputs", WALL0, "x"))
    with pytest.raises(RemoteProtocolError):
        s.start_received()
