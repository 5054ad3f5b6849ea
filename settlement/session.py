"""The live receipt loop of one job (pure): what the provider claims, when it must pause, what the buyer
signs. The trio shells in node/ feed these with metering, clocks and messages.

Provider side:
- ``ReceiptIssuer`` turns cumulative metering into receipt n+1 of the chain. Rule 1: whatever the
  meter says, an issued receipt never breaks a chain rule (settlement.chain): figures are made
  monotonic, metered time is capped by the agreed duration, and the amount is ``amount_due``.
- ``ExposureGuard`` enforces the agreed exposure cap. Rule 2: the job is paused when a countersignature
  is ``countersign_timeout_ms`` late, or when the next interval would take the unsigned amount past
  ``exposure_cap_micros``; it is stopped ``grace_ms`` after pausing if nothing arrives. Rule 3: a final
  receipt claims at most what settlement.billing's Rule 3 lets an unsigned claim be owed (the unsigned
  window past the last countersigned receipt, never more than the cap), whatever its reason, so what a
  buyer can owe without signing is bounded before the job starts.
Buyer side:
- ``ReceiptVerifier`` checks receipt n before countersigning: the provider's signature, every chain
  rule, and metered time against the buyer's own clock (Rule 4: a provider cannot bill more time than
  the buyer saw pass, within the stated tolerance).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from p2p.envelope import Signed
from p2p.identity import verify_signature
from p2p.market_records import Agreement
from p2p.receipt_records import FINAL, RUNNING, Receipt, Usage
from settlement.billing import (
    amount_due,
    energy_bound_mj,
    gpu_memory_bound_bytes,
    memory_bound_bytes,
    metered_bound,
    metered_within,
    sm_pct_bound,
    timeline_end_ms,
    unsigned_window_ms,
    usage_bound,
)
from settlement.chain import ChainChecker, Finding

RUN, PAUSE, RESUME, STOP = "run", "pause", "resume", "stop"


class ReceiptIssuer:
    def __init__(self, agreement: Signed[Agreement]) -> None:
        self.agreement = agreement.record
        self.agreement_id = agreement.record_id
        self.last: Receipt | None = None
        self.last_id = self.agreement_id
        ag = self.agreement
        self._max_metered = ag.max_duration_ms + ag.terms.interval_ms
        t = ag.terms
        self._timeline_end = timeline_end_ms(ag.created_at_ms, ag.max_duration_ms,
                                             unsigned_window_ms(t.interval_ms, t.countersign_timeout_ms, t.grace_ms))

    def next(self, metered_ms: int, usage: Usage, now_ms: int, *, final: tuple[str, int | None, bytes | None] | None
             = None, max_metered_ms: int | None = None) -> Receipt:
        """Receipt n+1 from cumulative figures (Rule 1). ``final`` = (reason, exit code, output digest)."""
        ag, prev = self.agreement, self.last
        metered = min(metered_ms, self._max_metered)
        if max_metered_ms is not None:
            metered = min(metered, max_metered_ms)
        # Within the agreement's timeline (settlement.billing Rule 4) whatever the wall clock says: a
        # clock stepped back or far forward must not make an honest receipt break a chain rule.
        issued = min(max(now_ms, ag.created_at_ms), self._timeline_end)
        if prev is not None:
            metered = max(metered, prev.metered_ms)
            issued = max(issued, prev.issued_at_ms)
            p = prev.usage
            usage = Usage(cpu_core_ms=max(usage.cpu_core_ms, p.cpu_core_ms),
                          mem_peak_bytes=max(usage.mem_peak_bytes, p.mem_peak_bytes),
                          gpu_ms=max(usage.gpu_ms, p.gpu_ms), gpu_mem_peak_bytes=max(usage.gpu_mem_peak_bytes,
                                                                                     p.gpu_mem_peak_bytes),
                          gpu_sm_pct_ms=max(usage.gpu_sm_pct_ms, p.gpu_sm_pct_ms),
                          energy_mj=max(usage.energy_mj, p.energy_mj))
        metered = min(metered, max(0, metered_bound(issued - ag.created_at_ms) - 1))
        if prev is not None:
            metered = max(metered, prev.metered_ms)
        cpu_cap = usage_bound(metered, ag.resources.cpu_millis)
        gpus = ag.resources.gpus
        gpu_ms = min(max(metered * gpus, usage.gpu_ms), usage_bound(metered, gpus * 1000)) if gpus else 0
        # Every counter within its bound (settlement.billing Rules 2, 2b): never above the previous
        # receipt's, which was within the same or a smaller bound.
        usage = replace(usage, cpu_core_ms=min(usage.cpu_core_ms, cpu_cap), gpu_ms=gpu_ms,
                        mem_peak_bytes=min(usage.mem_peak_bytes, memory_bound_bytes(ag.resources.memory_mib)),
                        gpu_sm_pct_ms=min(usage.gpu_sm_pct_ms, sm_pct_bound(metered, gpus)),
                        gpu_mem_peak_bytes=min(usage.gpu_mem_peak_bytes, gpu_memory_bound_bytes(gpus)),
                        energy_mj=min(usage.energy_mj, energy_bound_mj(issued - ag.created_at_ms, gpus)))
        reason, exit_code, digest = final if final is not None else (None, None, None)
        return Receipt(
            agreement_id=self.agreement_id, provider=ag.provider, buyer=ag.buyer,
            seq=1 if prev is None else prev.seq + 1, prev=self.last_id, issued_at_ms=issued, metered_ms=metered,
            usage=usage, amount_micros=amount_due(metered, ag.price_micros_per_s),
            state=FINAL if final is not None else RUNNING, reason=reason, exit_code=exit_code,
            output_digest=digest)

    def issued(self, receipt: Receipt, body: bytes) -> None:
        self.last = receipt
        self.last_id = hashlib.sha256(body).digest()


@dataclass
class ExposureGuard:
    interval_ms: int
    countersign_timeout_ms: int
    grace_ms: int
    exposure_cap_micros: int
    price_micros_per_s: int
    cosigned_amount: int = 0
    cosigned_seq: int = 0
    paused_since_ms: int | None = None
    cosigned_metered_ms: int = 0

    def __post_init__(self) -> None:
        self._pending: dict[int, tuple[int, int]] = {}  # seq -> (sent at, amount)

    @classmethod
    def for_agreement(cls, agreement: Agreement) -> ExposureGuard:
        t = agreement.terms
        return cls(t.interval_ms, t.countersign_timeout_ms, t.grace_ms, t.exposure_cap_micros,
                   agreement.price_micros_per_s)

    def sent(self, seq: int, amount: int, now_ms: int) -> None:
        self._pending[seq] = (now_ms, amount)

    def countersigned(self, seq: int, amount: int, metered_ms: int) -> None:
        if seq > self.cosigned_seq:
            self.cosigned_seq, self.cosigned_amount, self.cosigned_metered_ms = seq, amount, metered_ms
        for s in [s for s in self._pending if s <= seq]:
            del self._pending[s]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def decide(self, now_ms: int, running_amount: int) -> str:
        """What the job should do now (Rule 2): RUN, PAUSE, RESUME or STOP."""
        oldest = min((sent for sent, _ in self._pending.values()), default=None)
        late = oldest is not None and now_ms - oldest > self.countersign_timeout_ms
        next_step = self.price_micros_per_s * self.interval_ms // 1000
        over = running_amount + next_step - self.cosigned_amount > self.exposure_cap_micros
        if self.paused_since_ms is None:
            if late or over:
                self.paused_since_ms = now_ms
                return PAUSE
            return RUN
        if not late and not over:
            self.paused_since_ms = None
            return RESUME
        if now_ms - self.paused_since_ms > self.grace_ms:
            return STOP
        return PAUSE

    def unsigned_ceiling_ms(self) -> int:
        """Rule 3: the most metered time a final receipt may claim before the buyer countersigns it."""
        window = unsigned_window_ms(self.interval_ms, self.countersign_timeout_ms, self.grace_ms)
        return min(self.cosigned_metered_ms + window,
                   metered_within(self.cosigned_amount + self.exposure_cap_micros, self.price_micros_per_s))


class ReceiptVerifier:
    """The buyer's checks before countersigning receipt n (Rule 4).

    Rule 5 (clocks): durations are measured on the buyer's monotonic clock (``started_at_ms`` and
    ``check``'s ``now_ms``), so a wall clock that steps never refuses an honest receipt. The buyer's
    wall clock is only compared with the provider's timestamps to estimate the skew between them
    (``skew_ms``: the least of "buyer's wall clock on arrival minus ``issued_at_ms``", which is the skew
    plus the shortest delivery time), so that a clock that is off can be named.
    """

    SKEW_NOTE_MS = 2000  # below this a difference is delivery time or noise, not worth a word

    def __init__(self, agreement: Signed[Agreement], started_at_ms: int) -> None:
        self.checker = ChainChecker(agreement.record, agreement.record_id)
        self.started_at_ms = started_at_ms  # the buyer's monotonic clock when the job could start
        self.skew_ms: int | None = None

    def check(self, signed: Signed[Receipt], now_ms: int, wall_ms: int | None = None) -> list[Finding]:
        r = signed.record
        rid = signed.record_id
        if len(signed.sigs) < 1 or not verify_signature(r.provider, signed.signed_message(0), signed.sigs[0]):
            return [Finding("receipt_signature", "the provider signature is invalid", r.seq, rid)]
        if wall_ms is not None:
            ahead = wall_ms - r.issued_at_ms
            self.skew_ms = ahead if self.skew_ms is None else min(self.skew_ms, ahead)
        findings = self.checker.check_content(r, rid)
        seen = now_ms - self.started_at_ms
        if r.metered_ms > metered_bound(seen):
            findings.append(Finding("metered_exceeds_wall", f"{r.metered_ms} ms billed, the buyer saw {seen} ms pass",
                                    r.seq, rid))
        return findings

    def clock_note(self) -> str | None:
        """"your clock is N s ahead of (behind) the provider's", when the receipts show it."""
        return skew_note(self.skew_ms, self.SKEW_NOTE_MS)

    def accept(self, signed: Signed[Receipt]) -> None:
        self.checker.advance(signed.record, signed.record_id)

    @property
    def last(self) -> Receipt | None:
        return self.checker.last


def skew_note(ahead_ms: int | None, threshold_ms: int = ReceiptVerifier.SKEW_NOTE_MS) -> str | None:
    """Name a clock difference of at least ``threshold_ms`` (``ahead_ms``: ours minus the provider's)."""
    if ahead_ms is None or abs(ahead_ms) < threshold_ms:
        return None
    side = "ahead of" if ahead_ms > 0 else "behind"
    return f"your clock is {abs(ahead_ms) / 1000:.0f} s {side} the provider's"


def closing_receipt(agreement: Signed[Agreement], last: Receipt | None, last_id: bytes,
                    cosigned: Receipt | None, reason: str, now_ms: int) -> Receipt:
    """A final receipt that ends a chain claiming nothing beyond the last countersigned receipt
    (settlement.chain: a closing receipt), e.g. for agreements left open by a provider crash."""
    ag = agreement.record
    base = cosigned
    return Receipt(
        agreement_id=agreement.record_id, provider=ag.provider, buyer=ag.buyer,
        seq=1 if last is None else last.seq + 1, prev=last_id,
        issued_at_ms=max(now_ms, last.issued_at_ms if last is not None else 0),
        metered_ms=base.metered_ms if base else 0, usage=base.usage if base else Usage(0, 0, 0, 0, 0, 0),
        amount_micros=base.amount_micros if base else 0, state=FINAL, reason=reason, exit_code=None,
        output_digest=None)
