"""The provider's session of one job (pure): the receipt chain, the exposure guard, the pause reasons and
the final reason, behind the table of node.jobsession. node.provider_job performs what it returns.

Rule 1 (durable before acknowledged): a receipt comes out as ``Store``; the session counts it as issued,
and hands back the ``Send``, only when told it is ``stored``. A countersignature is likewise counted by
the guard only once stored.
Rule 2: a countersignature that does not decode, does not verify, or is not exactly a receipt we issued
is treated as missing, never as valid; so is a message the table does not allow now. Past
``MAX_BAD_FRAMES`` of them the buyer is no longer listened to (RemoteProtocolError); the exposure
guard does the rest.
Rule 3: a job being stopped is never paused: its run time is metered until it exits. A job whose buyer
has fallen behind while it is being stopped is killed at the last sample before it would run past what
an unsigned final may claim (half an interval of margin: samples jitter).
Rule 4: the final reason is the first reason a stop was asked for; else ``deadline`` or ``completed``
from the run; ``provider_fault`` when nothing ran and nobody asked. Whatever happened, ``closing``
gives a final receipt that claims nothing beyond what the buyer countersigned.
Rule 5: outputs are offered only by a final whose buyer is still answering, and delivered only once
that final is countersigned.
"""

from __future__ import annotations

import logging

from node.jobsession import (
    CANCEL,
    COUNTERSIGN,
    COUNTERSIGNATURE_LATE,
    FINAL,
    OUTPUTS,
    PROVIDER,
    RECEIPT,
    RECV,
    SEND,
    START,
    Action,
    JobMachine,
    Kill,
    Pause,
    Resume,
    Send,
    Stop,
    Store,
    kind_of,
)
from p2p.envelope import Signed, open_countersigned, open_signed, sign_record
from p2p.errors import CodecError, RemoteProtocolError, SignatureError
from p2p.identity import NodeKey
from p2p.job_wire import Cancel, Countersign, Done, Fail, HaveLayers, ReceiptMsg, Status
from p2p.market_records import Agreement
from p2p.receipt_records import (
    BUYER_CANCEL,
    BUYER_UNRESPONSIVE,
    COMPLETED,
    DEADLINE,
    KILLED_EXTERNALLY,
    PROVIDER_FAULT,
    ZERO_USAGE,
    Receipt,
    Usage,
)
from p2p.records import Record
from sandbox.metering import MeterSample
from settlement.billing import amount_due
from settlement.session import PAUSE, RESUME, RUN, STOP, ExposureGuard, ReceiptIssuer, closing_receipt

log = logging.getLogger("suanli.node.job")

MAX_BAD_FRAMES = 64


def usage_of(sample: MeterSample) -> Usage:
    return Usage(cpu_core_ms=sample.cpu_core_ms, mem_peak_bytes=sample.mem_peak_bytes, gpu_ms=0,
                 gpu_mem_peak_bytes=sample.gpu_mem_peak_bytes, gpu_sm_pct_ms=sample.gpu_sm_pct_ms,
                 energy_mj=sample.energy_mj)


class ProviderSession:
    def __init__(self, agreement: Signed[Agreement], key: NodeKey) -> None:
        self.agreement, self.ag, self.key = agreement, agreement.record, key
        self.machine = JobMachine(PROVIDER)
        self.issuer = ReceiptIssuer(agreement)
        self.guard = ExposureGuard.for_agreement(agreement.record)
        self.issued: dict[int, Signed[Receipt]] = {}
        self.issued_by_body: dict[bytes, Signed[Receipt]] = {}  # the same receipts, by their body bytes
        self.paused: set[str] = set()  # the reasons the container is frozen (jobsession Rule 2)
        self.stop_reason: str | None = None
        self.final_seq: int | None = None
        self.final_cosigned = False
        self.outputs_offered = False
        self.bad_frames = 0

    @property
    def tag(self) -> str:
        return self.agreement.record_id.hex()[:12]

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    @property
    def final(self) -> Signed[Receipt] | None:
        return self.issued.get(self.final_seq) if self.final_seq is not None else None

    # --- events: messages and transfers -------------------------------------------------------------
    def start_received(self) -> None:
        self.machine.move(RECV, START)

    def transfer_done(self, kind: str) -> None:
        """An upload arrived in full (``image``, ``inputs``) or the outputs went out (``outputs``)."""
        self.machine.move(SEND if kind == OUTPUTS else RECV, kind)

    def message_received(self, msg: Record) -> list[Action]:
        """A message from the buyer while the job runs or closes (Rule 2)."""
        if isinstance(msg, Countersign):
            return self.countersignature_received(msg.receipt)
        if not isinstance(msg, Cancel) or not self.machine.allows(RECV, kind_of(msg)):
            self.bad_frame(f"a {type(msg).__name__} the job protocol does not allow now (ignored)")
            return []
        self.machine.move(RECV, CANCEL)
        log.info("job %s: the buyer cancelled (%s)", self.tag, msg.reason)
        return self.stop_requested(BUYER_CANCEL)

    def countersignature_received(self, data: bytes) -> list[Action]:
        """``Store`` of the countersigned receipt, or nothing for one that counts as missing (Rule 2)."""
        if not self.machine.allows(RECV, COUNTERSIGN):
            self.bad_frame("a countersignature the job protocol does not allow now (ignored)")
            return []
        self.machine.move(RECV, COUNTERSIGN)
        cosigned = open_countersigned(data, self.issued_by_body)  # the common case, checked cheaply
        if cosigned is None:  # not exactly one of ours plus a valid buyer signature: the full check says why
            try:
                cosigned = open_signed(data, Receipt, min_sigs=2)
            except (CodecError, SignatureError) as exc:
                self.bad_frame(f"a countersignature that does not verify (treated as missing): {exc}")
                return []
        seq = cosigned.record.seq
        mine = self.issued.get(seq)
        if mine is None or cosigned.body != mine.body or cosigned.sigs[0] != mine.sigs[0]:
            self.bad_frame("a countersignature for a receipt we did not issue (treated as missing)")
            return []
        if seq <= self.guard.cosigned_seq and seq != self.final_seq:
            return []  # already counted
        return [Store(cosigned)]

    def bad_frame(self, what: str) -> None:
        self.bad_frames += 1
        if self.bad_frames <= 8:  # enough to diagnose; a flood is cut off below
            log.warning("job %s: %s", self.tag, what)
        if self.bad_frames > MAX_BAD_FRAMES:
            raise RemoteProtocolError("too many bad frames from the buyer", bad_frames=self.bad_frames)

    # --- events: the daemon and the container -------------------------------------------------------
    def stop_requested(self, reason: str) -> list[Action]:
        """The first reason asked for is the chain's final reason (Rule 4)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        return [Stop(self.stop_reason)]

    def container_exited(self, killed_externally: bool) -> list[Action]:
        """An exit that someone else caused on the engine is never reported as completed (M6)."""
        return self.stop_requested(KILLED_EXTERNALLY) if killed_externally else []

    def pause_requested(self, reason: str) -> list[Action]:
        """A reason to freeze the container; ``Pause`` only for the first (jobsession Rule 2)."""
        if reason in self.paused:
            return []
        first = not self.paused
        self.paused.add(reason)
        return [Pause(reason)] if first else []

    def pause_lifted(self, reason: str) -> list[Action]:
        """A reason gone; ``Resume`` only when it was the last."""
        if reason not in self.paused:
            return []
        self.paused.discard(reason)
        return [] if self.paused else [Resume()]

    def meter_sampled(self, sample: MeterSample, now_ms: int, wall_ms: int, *, exited: bool,
                      killed: bool) -> list[Action]:
        """One sample of the running job: the guard's decision, then receipt n+1 if one is due."""
        decision = self.guard.decide(now_ms, amount_due(sample.wall_ms, self.ag.price_micros_per_s))
        out: list[Action] = []
        if decision == PAUSE and not exited and not self.stopping:  # Rule 3: a stopping job is never paused
            out += self.pause_requested(COUNTERSIGNATURE_LATE)
        elif decision == RESUME and not exited:
            out += self.pause_lifted(COUNTERSIGNATURE_LATE)
        interval = self.ag.terms.interval_ms
        past_ceiling = (self.stopping and decision == PAUSE
                        and sample.wall_ms + interval + interval // 2 > self.guard.unsigned_ceiling_ms())
        if (decision == STOP or past_ceiling) and not exited and not killed:
            if decision == STOP:
                self.stop_requested(BUYER_UNRESPONSIVE)
                out.append(Kill("buyer unresponsive past the grace"))
            else:
                out.append(Kill("still running past what is countersigned, while stopping"))
        last = self.issuer.last
        billed = last.metered_ms if last is not None else 0
        # The meter's first sample comes as the container starts: no receipt for a few milliseconds.
        worth_a_receipt = last is not None or sample.wall_ms * 2 >= interval
        if decision in (RUN, RESUME) and sample.wall_ms > billed and worth_a_receipt:
            out.append(self._receipt(sample.wall_ms, usage_of(sample), wall_ms))
        return out

    # --- actions: messages and receipts -------------------------------------------------------------
    def send(self, msg: Record) -> Send:
        """A message the shell sends (not a receipt: those come from ``stored``)."""
        self.machine.move(SEND, kind_of(msg))
        return Send(msg)

    def status(self, phase: str, wall_ms: int, detail: str = "") -> Send:
        return self.send(Status(phase, wall_ms, detail))

    def have_layers(self, layers: tuple[bytes, ...]) -> Send:
        """p2p.job_wire Rule 3: the layers of the buyer's archive this provider holds, before ``need_image``."""
        return self.send(HaveLayers(layers))

    def cannot_start(self, reason: str, detail: str, wall_ms: int) -> list[Action]:
        """``job.fail`` says why, and a final receipt that claims nothing closes the empty chain."""
        return [self.send(Fail(reason[:256], detail[:2048])),
                self._receipt(0, ZERO_USAGE, wall_ms, final=(PROVIDER_FAULT, None, None))]

    def final_reason(self, ran: bool, timed_out: bool) -> str:
        """Rule 4."""
        if self.stop_reason is not None:
            return self.stop_reason
        if not ran:
            return PROVIDER_FAULT
        return DEADLINE if timed_out else COMPLETED

    def finish(self, *, ran: bool, timed_out: bool, exit_code: int | None, outputs_digest: bytes | None,
               last: MeterSample | None, wall_ms: int) -> Store:
        """The final receipt: whatever its reason, it claims no more than an unsigned claim may be owed
        (billing Rule 3); an unresponsive buyer is offered no outputs, so its final names none."""
        reason = self.final_reason(ran, timed_out)
        self.outputs_offered = ran and reason != BUYER_UNRESPONSIVE
        metered, usage = (last.wall_ms, usage_of(last)) if last is not None else (0, ZERO_USAGE)
        digest = outputs_digest if self.outputs_offered else None
        return self._receipt(metered, usage, wall_ms, final=(reason, exit_code, digest),
                             max_metered_ms=self.guard.unsigned_ceiling_ms())

    @property
    def awaits_final_countersignature(self) -> bool:
        final = self.final
        return final is not None and final.record.reason != BUYER_UNRESPONSIVE and not self.final_cosigned

    def may_deliver_outputs(self) -> bool:
        """Rule 5."""
        return self.outputs_offered and self.final_cosigned

    def done(self, exit_code: int | None, oom_killed: bool, timed_out: bool, output_bytes: int) -> Send:
        final = self.final
        reason = final.record.reason if final is not None and final.record.reason else PROVIDER_FAULT
        return self.send(Done(exit_code if exit_code is not None else -1, oom_killed, timed_out, reason, output_bytes))

    def _receipt(self, metered_ms: int, usage: Usage, wall_ms: int,
                 final: tuple[str, int | None, bytes | None] | None = None,
                 max_metered_ms: int | None = None) -> Store:
        kind = FINAL if final is not None else RECEIPT
        self.machine.check(SEND, kind)  # the table's own error: the move itself is made when it is stored
        r = self.issuer.next(metered_ms, usage, wall_ms, final=final, max_metered_ms=max_metered_ms)
        return Store(sign_record(r, self.key))

    def stored(self, signed: Signed[Receipt], now_ms: int) -> list[Action]:
        """``signed`` is durable (Rule 1): a receipt of ours is issued and goes out; a countersigned one
        counts."""
        r = signed.record
        if len(signed.sigs) >= 2:
            self.guard.countersigned(r.seq, r.amount_micros, r.metered_ms)
            if r.seq == self.final_seq:
                self.final_cosigned = True
            return []
        self.machine.move(SEND, FINAL if r.state == "final" else RECEIPT)
        self._issued(signed)
        self.guard.sent(r.seq, r.amount_micros, now_ms)
        if r.state == "final":
            self.final_seq = r.seq
        return [Send(ReceiptMsg(signed.to_bytes()))]

    def closing(self, wall_ms: int) -> Signed[Receipt] | Store:
        """The chain's end whatever happened (Rule 4): the final already issued, or the ``Store`` of a
        closing receipt (outside the table: it ends the chain whatever phase a failure left)."""
        last = self.issuer.last
        if last is not None and last.state == "final":
            return self.issued[last.seq]
        cosigned = self.issued.get(self.guard.cosigned_seq)
        record = closing_receipt(self.agreement, last, self.issuer.last_id,
                                 cosigned.record if cosigned is not None else None,
                                 self.stop_reason or PROVIDER_FAULT, wall_ms)
        return Store(sign_record(record, self.key))

    def closing_stored(self, signed: Signed[Receipt]) -> None:
        self._issued(signed)

    def _issued(self, signed: Signed[Receipt]) -> None:
        self.issuer.issued(signed.record, signed.body)
        self.issued[signed.record.seq] = signed
        self.issued_by_body[signed.body] = signed
