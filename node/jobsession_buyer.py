"""The buyer's session of one job (pure): what to send, what to countersign, what the job came to,
behind the table of node.jobsession. node.buyer_job performs what it returns.

Rule 1: a receipt is countersigned only after ``ReceiptVerifier`` found nothing wrong with it (provider
signature, every chain rule, billed time against the buyer's own monotonic clock, passed in). A
receipt that breaks a rule is refused: ``cancel`` goes out and the job fails with the findings.
Rule 1a: the provider sends the outputs only once the final receipt is countersigned; the final's output
digest binds them, so outputs that do not match it, or that never come, fail the job with the signed
digest as the evidence.
Rule 2: a countersigned receipt comes out as ``Store``; the countersignature goes out (``Send``) only
once the shell says it is ``stored`` (the buyer's own evidence).
Rule 3: billed time is checked from the moment the inputs were sent (``transfer_done("inputs")``):
the container cannot start before, so upload time can never be billed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from node.jobsession import (
    BUYER,
    CANCEL,
    COUNTERSIGN,
    IMAGE,
    INPUTS,
    RECV,
    SEND,
    START,
    Abort,
    Action,
    Finish,
    JobMachine,
    Send,
    Store,
    Upload,
    kind_of,
)
from p2p.envelope import Signed, countersign, open_signed
from p2p.errors import CodecError, SignatureError, SuanliError
from p2p.identity import NodeKey
from p2p.job_wire import Cancel, Chunk, Countersign, Done, End, Fail, HaveLayers, ReceiptMsg, Start, Status
from p2p.market_records import Agreement
from p2p.receipt_records import FINAL, Receipt
from p2p.records import Record
from settlement.chain import Finding
from settlement.session import ReceiptVerifier

MAX_OUTPUT_BYTES = 1 << 30
NO_OUTPUTS_DIGEST = hashlib.sha256(b"").digest()


class JobFailed(SuanliError):
    """The job could not run, or the provider broke the rules, or vanished; ``reason`` says which."""


@dataclass
class JobOutcome:
    exit_code: int | None = None
    reason: str | None = None
    receipts: list[Signed[Receipt]] = field(default_factory=list)
    outputs: bytes = b""
    oom_killed: bool = False
    started_at_ms: int | None = None
    expected_outputs: bytes | None = None  # the countersigned final's output digest, until they arrive
    outputs_arrived: bool = False
    clock_note: str | None = None  # "your clock is N s ahead of the provider's", when receipts show it

    @property
    def last(self) -> Receipt | None:
        return self.receipts[-1].record if self.receipts else None


class BuyerSession:
    def __init__(self, agreement: Signed[Agreement], key: NodeKey, now_ms: int, *, has_image: bool,
                 image_layers: tuple[bytes, ...] = ()) -> None:
        self.agreement, self.key, self.has_image = agreement, key, has_image
        self.image_layers = image_layers  # the archive's layers (diff ids), named in ``start``
        self.omit_layers: tuple[bytes, ...] = ()  # those the provider holds
        self.machine = JobMachine(BUYER)
        self.verifier = ReceiptVerifier(agreement, now_ms)  # moved on to the inputs' upload (Rule 3)
        self.outcome = JobOutcome()
        self._out_buf = bytearray()
        self._out_hash = hashlib.sha256()
        self._out_digest = NO_OUTPUTS_DIGEST  # of no outputs, until they arrive

    @property
    def finished(self) -> bool:
        return self.machine.finished

    def start(self, input_bytes: int, image_bytes: int) -> Send:
        self.machine.move(SEND, START)
        return Send(Start(self.agreement.record_id, input_bytes, image_bytes, self.image_layers))

    def cancel(self, reason: str = "buyer_cancel") -> list[Action]:
        """Ctrl-C: ``cancel`` goes out, unless the job is over already."""
        if not self.machine.allows(SEND, CANCEL):
            return []
        self.machine.move(SEND, CANCEL)
        return [Send(Cancel(reason))]

    def transfer_done(self, kind: str, now_ms: int) -> None:
        """The ``image`` or ``inputs`` blob went out in full."""
        self.machine.move(SEND, kind)
        if kind == INPUTS:
            self.verifier.started_at_ms = now_ms  # Rule 3

    def message_received(self, msg: Record, now_ms: int, wall_ms: int) -> list[Action]:
        """One message from the provider; JobFailed (or ``Abort`` after a ``cancel``) when the job fails,
        RemoteProtocolError for a move the table does not allow."""
        if isinstance(msg, ReceiptMsg):
            return self._receipt(msg.receipt, now_ms, wall_ms)
        self.machine.move(RECV, kind_of(msg))
        if isinstance(msg, Status):
            if msg.phase == "running":
                self.outcome.started_at_ms = msg.at_ms
            elif msg.phase == "need_image":
                if not self.has_image:
                    raise JobFailed("the provider lacks the image and no --image-archive was given",
                                    reason="image_missing")
                return [Upload(IMAGE, self.omit_layers)]
            elif msg.phase == "need_inputs":
                return [Upload(INPUTS)]
        elif isinstance(msg, HaveLayers):  # p2p.job_wire Rule 3: only layers the archive has may be left out
            self.omit_layers = tuple(d for d in msg.layers if d in self.image_layers)
        elif isinstance(msg, Chunk):  # outputs: the table allows no other kind here
            self._out_buf += msg.data
            self._out_hash.update(msg.data)
            if len(self._out_buf) > MAX_OUTPUT_BYTES:
                raise JobFailed("outputs exceed 1 GiB", reason="outputs_too_large")
        elif isinstance(msg, End):
            self._outputs_end(msg)
        elif isinstance(msg, Done):
            return self._done(msg)
        elif isinstance(msg, Fail):
            raise JobFailed(f"the provider could not run the job: {msg.reason}: {msg.detail}", reason=msg.reason)
        return []  # Log: the shell shows it

    def _outputs_end(self, msg: End) -> None:
        out = self.outcome
        self._out_digest = self._out_hash.digest()
        if msg.sha256 != self._out_digest or msg.total_bytes != len(self._out_buf):
            raise JobFailed("the outputs do not match their digest", reason="outputs_corrupt")
        if out.expected_outputs is not None and self._out_digest != out.expected_outputs:
            raise JobFailed("the outputs are not the ones the final receipt names (its output digest); "
                            "the countersigned final receipt is the evidence", reason="outputs_corrupt")
        out.outputs = bytes(self._out_buf)
        out.outputs_arrived = True

    def _done(self, msg: Done) -> list[Action]:
        out = self.outcome
        out.exit_code, out.reason, out.oom_killed = msg.exit_code, msg.reason, msg.oom_killed
        if out.expected_outputs is not None and not out.outputs_arrived and out.expected_outputs != NO_OUTPUTS_DIGEST:
            raise JobFailed("the provider ended the job without the outputs its countersigned final receipt "
                            "names; that receipt is the evidence", reason="outputs_missing")
        return [Finish(msg.reason)]

    def _receipt(self, data: bytes, now_ms: int, wall_ms: int) -> list[Action]:
        try:
            signed = open_signed(data, Receipt)
        except (CodecError, SignatureError) as exc:
            raise JobFailed(f"the provider sent a receipt that does not verify: {exc}", reason="bad_receipt") from exc
        r = signed.record
        self.machine.move(RECV, kind_of(ReceiptMsg(data), r))
        findings = self.verifier.check(signed, now_ms, wall_ms)
        if r.state == FINAL and r.output_digest is not None:
            if self.outcome.outputs_arrived and r.output_digest != self._out_digest:  # sent before the final
                findings.append(Finding("output_digest", "the final receipt's output digest is not what arrived",
                                        r.seq))
            elif not self.outcome.outputs_arrived:
                self.outcome.expected_outputs = r.output_digest  # Rule 1a: checked when they arrive
        if findings:
            detail = "; ".join(f.describe() for f in findings)
            failed = JobFailed(f"refusing receipt {r.seq}: {detail}", reason="receipt_refused", findings=findings)
            return [*self.cancel("receipt_refused"), Abort(failed)]
        return [Store(countersign(signed, self.key))]

    def stored(self, cosigned: Signed[Receipt]) -> Send:
        """Rule 2: the countersigned receipt is durable; it counts, and the countersignature goes out."""
        self.verifier.accept(cosigned)
        self.outcome.receipts.append(cosigned)
        self.machine.move(SEND, COUNTERSIGN)
        return Send(Countersign(cosigned.to_bytes()))

    def clock_note(self) -> str | None:
        return self.verifier.clock_note()
