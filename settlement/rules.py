"""The per-receipt rules of a receipt chain (pure): what receipt n must be, given the agreement and
receipt n-1. The buyer applies them live before countersigning (settlement.session); the audit folds a
whole chain with them (settlement.chain, which also holds the rules that need the whole chain).

Each rule is a named finding (docs/PROTOCOL.md §5, "Receipt chains"):
- wrong_agreement / wrong_parties: a receipt names this agreement and its two parties.
- seq_gap / broken_link: ``seq`` is the one after the previous receipt's; ``prev`` is the SHA-256 of the
  previous receipt's body (the agreement id for seq 1). After a gap, or after a slot whose receipt failed
  its signature (``skip``), the link is not checked: there is nothing verified to link to.
- decreasing: issued_at, metered time, every usage counter and the amount never decrease.
- wrong_amount: ``amount == amount_due(metered_ms, price)`` exactly (settlement.billing Rule 1).
- metered_exceeds_wall / usage_exceeds_allocation / exceeds_max_duration: physical bounds
  (settlement.billing Rules 2, 2b).
- bad_state / after_final: a running receipt has no reason, exit code or digest; a final one has a
  known reason, and ``completed`` has an exit code and an output digest; nothing follows a final one.
- outside_timeline: issued no earlier than the agreement and, unless it is a closing receipt, no later
  than the agreement's timeline allows (settlement.billing Rule 4).

``_clean`` is every rule as one predicate, the fast path of an honest chain; ``_findings`` the same rules
one by one with their details. They share what can be shared without slowing the fast path
(``_kept_up``, the monotony rule); the rest of ``_clean`` inlines settlement.billing's arithmetic, and
the property test in tests/settlement/test_chain_fast_path.py holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2p.market_records import Agreement
from p2p.receipt_records import COMPLETED, FINAL, REASONS, RUNNING, Receipt
from settlement.billing import (
    MAX_GPU_WATTS,
    TOLERANCE_PERCENT,
    amount_due,
    energy_bound_mj,
    gpu_memory_bound_bytes,
    memory_bound_bytes,
    metered_bound,
    sm_pct_bound,
    timeline_end_ms,
    unsigned_window_ms,
    usage_bound,
)


@dataclass(frozen=True)
class Finding:
    rule: str
    detail: str
    seq: int | None = None
    receipt_id: bytes | None = None

    def describe(self) -> str:
        where = f"receipt {self.seq}" if self.seq is not None else "agreement"
        return f"{where}: {self.rule}: {self.detail}"


@dataclass
class ChainReport:
    agreement_id: bytes
    provider: bytes
    buyer: bytes
    price_micros_per_s: int
    state: str = "empty"
    billed_ms: int = 0
    amount_micros: int = 0
    last_seq: int = 0
    last_receipt_id: bytes | None = None
    receipts: int = 0
    pending: int = 0
    # The unsigned claim, never part of ``amount_micros`` (settlement.chain's docstring).
    unsigned_claim_micros: int = 0
    unsigned_owed_micros: int = 0
    unsigned_owed_ms: int = 0
    unsigned_seq: int = 0
    unsigned_receipt_id: bytes | None = None
    unsigned_state: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


class ChainChecker:
    """Checks receipts of one agreement one at a time, in order.

    The buyer uses ``check_content`` live, before countersigning receipt n; the auditor folds a whole
    chain with ``verify_chain``. Signatures are checked by the caller (``verify_chain`` does).
    ``next_seq`` is the seq the next receipt must carry; ``last_id`` the hash it must link to, None when
    the slot before it held a receipt that failed its signature (``skip``): no link is checked then.
    """

    def __init__(self, agreement: Agreement, agreement_id: bytes) -> None:
        self.agreement = agreement
        self.agreement_id = agreement_id
        self.last: Receipt | None = None
        self.last_id: bytes | None = agreement_id
        self.next_seq = 1
        self.final = False
        self._gpus_milli = agreement.resources.gpus * 1000
        self._mem_bound = memory_bound_bytes(agreement.resources.memory_mib)
        self._gpu_mem_bound = gpu_memory_bound_bytes(agreement.resources.gpus)
        self._cpu_milli = agreement.resources.cpu_millis
        self._max_metered = agreement.max_duration_ms + agreement.terms.interval_ms
        # What ``_clean`` needs of the agreement; a bound at no elapsed time is its tolerance.
        self._parties = (agreement.provider, agreement.buyer)
        self._price = agreement.price_micros_per_s
        self._created_at = agreement.created_at_ms
        self._wall_tolerance = metered_bound(0)
        self._cpu_tolerance = usage_bound(0, self._cpu_milli)
        self._gpu_tolerance = usage_bound(0, self._gpus_milli)
        t = agreement.terms
        self.window_ms = unsigned_window_ms(t.interval_ms, t.countersign_timeout_ms, t.grace_ms)
        self._timeline_end = timeline_end_ms(self._created_at, agreement.max_duration_ms, self.window_ms)

    def check_content(self, r: Receipt, receipt_id: bytes, *, monotonic: bool = True) -> list[Finding]:
        """Every rule that needs only this receipt and the one before it.

        ``monotonic=False`` is for a closing receipt (see ``verify_chain``): it claims nothing new, so
        its figures need not keep up with pending claims it withdraws.
        """
        return [] if self._clean(r, monotonic) else self._findings(r, receipt_id, monotonic)

    def _clean(self, r: Receipt, monotonic: bool) -> bool:
        """True exactly when ``_findings`` finds nothing: the same rules as one predicate, the fast path
        of an honest chain, with settlement.billing's arithmetic inlined (tests hold the two equal)."""
        prev, u, metered = self.last, r.usage, r.metered_ms
        if (self.final or r.seq != self.next_seq or (r.prev != self.last_id and self.last_id is not None)
                or r.agreement_id != self.agreement_id or (r.provider, r.buyer) != self._parties):
            return False
        if prev is not None and monotonic and not _kept_up(r, prev):
            return False
        if r.issued_at_ms < self._created_at or (monotonic and r.issued_at_ms > self._timeline_end):
            return False
        elapsed = r.issued_at_ms - self._created_at
        wall = self._wall_tolerance + (elapsed + elapsed * TOLERANCE_PERCENT // 100 if elapsed > 0 else 0)
        used = metered if metered > 0 else 0
        cpu = used * self._cpu_milli // 1000
        if (r.amount_micros != metered * self._price // 1000 or metered > wall or metered > self._max_metered
                or u.cpu_core_ms > cpu + cpu * TOLERANCE_PERCENT // 100 + self._cpu_tolerance):
            return False
        if u.mem_peak_bytes > self._mem_bound:
            return False
        if self._gpus_milli:
            gpu = used * self._gpus_milli // 1000
            gpu += gpu * TOLERANCE_PERCENT // 100 + self._gpu_tolerance
            board = elapsed * self._gpus_milli // 1000 if elapsed > 0 else 0
            board += board * TOLERANCE_PERCENT // 100 + self._gpu_tolerance
            if (u.gpu_ms > gpu or u.gpu_sm_pct_ms > 100 * gpu or u.gpu_mem_peak_bytes > self._gpu_mem_bound
                    or u.energy_mj > MAX_GPU_WATTS * board):
                return False
        elif u.gpu_ms or u.gpu_sm_pct_ms or u.gpu_mem_peak_bytes or u.energy_mj:
            return False
        if r.state == RUNNING:
            return r.reason is None and r.exit_code is None and r.output_digest is None
        return r.state == FINAL and r.reason in REASONS and (
            r.reason != COMPLETED or (r.exit_code is not None and r.output_digest is not None))

    def _findings(self, r: Receipt, receipt_id: bytes, monotonic: bool) -> list[Finding]:
        """``check_content``, rule by rule, each with its details."""
        ag, prev, out = self.agreement, self.last, []
        seq = r.seq

        def bad(rule: str, detail: str) -> None:
            out.append(Finding(rule, detail, seq, receipt_id))

        if r.agreement_id != self.agreement_id:
            bad("wrong_agreement", f"names agreement {r.agreement_id.hex()[:16]}")
        if r.provider != ag.provider or r.buyer != ag.buyer:
            bad("wrong_parties", "provider or buyer differs from the agreement's")
        if self.final:
            bad("after_final", "a receipt follows the final receipt")
        expected_seq = self.next_seq
        if seq != expected_seq:
            bad("seq_gap", f"seq {seq}, expected {expected_seq}")
        elif self.last_id is not None and r.prev != self.last_id:
            bad("broken_link", "prev is not the hash of the previous receipt")
        if prev is not None and monotonic and not _kept_up(r, prev):
            bad("decreasing", f"{', '.join(_decreased(r, prev))} decreased")
        due = amount_due(r.metered_ms, ag.price_micros_per_s)
        if r.amount_micros != due:
            bad("wrong_amount", f"amount {r.amount_micros} != {r.metered_ms} ms x {ag.price_micros_per_s}/s = {due}")
        if r.issued_at_ms < ag.created_at_ms:
            bad("outside_timeline", f"issued {ag.created_at_ms - r.issued_at_ms} ms before the agreement")
        elif monotonic and r.issued_at_ms > self._timeline_end:
            bad("outside_timeline", f"issued {r.issued_at_ms - self._timeline_end} ms after the agreement's "
                "timeline ends (uploads, duration and unsigned window)")
        elapsed = r.issued_at_ms - ag.created_at_ms
        if r.metered_ms > metered_bound(elapsed):
            bad("metered_exceeds_wall", f"{r.metered_ms} ms metered only {elapsed} ms after the agreement")
        if r.metered_ms > self._max_metered:
            bad("exceeds_max_duration", f"{r.metered_ms} ms metered, agreed at most {ag.max_duration_ms} ms")
        if r.usage.cpu_core_ms > usage_bound(r.metered_ms, self._cpu_milli):
            bad("usage_exceeds_allocation",
                f"{r.usage.cpu_core_ms} CPU core-ms in {r.metered_ms} ms with {self._cpu_milli} millicores")
        gpus = ag.resources.gpus
        if r.usage.mem_peak_bytes > self._mem_bound:
            bad("usage_exceeds_allocation", f"memory peak {r.usage.mem_peak_bytes} B with {ag.resources.memory_mib} "
                "MiB agreed")
        if r.usage.gpu_ms > (usage_bound(r.metered_ms, self._gpus_milli) if gpus else 0):
            bad("usage_exceeds_allocation", f"{r.usage.gpu_ms} GPU-ms with {gpus} GPUs")
        if r.usage.gpu_sm_pct_ms > sm_pct_bound(r.metered_ms, gpus):
            bad("usage_exceeds_allocation", f"{r.usage.gpu_sm_pct_ms} SM-%-ms with {gpus} GPUs")
        if r.usage.gpu_mem_peak_bytes > gpu_memory_bound_bytes(gpus):
            bad("usage_exceeds_allocation", f"GPU memory peak {r.usage.gpu_mem_peak_bytes} B with {gpus} GPUs")
        if r.usage.energy_mj > energy_bound_mj(elapsed, gpus):
            bad("usage_exceeds_allocation", f"{r.usage.energy_mj} mJ with {gpus} GPUs in {elapsed} ms")
        if r.state == RUNNING:
            if r.reason is not None or r.exit_code is not None or r.output_digest is not None:
                bad("bad_state", "a running receipt carries a reason, exit code or output digest")
        elif r.state == FINAL:
            if r.reason not in REASONS:
                bad("bad_state", f"unknown final reason {r.reason!r}")
            elif r.reason == COMPLETED and (r.exit_code is None or r.output_digest is None):
                bad("bad_state", "a completed job's final receipt needs an exit code and an output digest")
        else:
            bad("bad_state", f"unknown state {r.state!r:.32}")
        return out

    def advance(self, r: Receipt, receipt_id: bytes) -> None:
        self.last = r
        self.last_id = receipt_id
        self.next_seq = r.seq + 1
        self.final = self.final or r.state == FINAL

    def skip(self, seq: int) -> None:
        """Slots up to ``seq`` held receipts that failed their signature (settlement.chain, Rule S): the
        next receipt may carry ``seq + 1``, and its link is not checked (nothing verified to link to)."""
        self.next_seq = seq + 1
        self.last_id = None


_COUNTERS = ("cpu_core_ms", "mem_peak_bytes", "gpu_ms", "gpu_mem_peak_bytes", "gpu_sm_pct_ms", "energy_mj")


def _kept_up(r: Receipt, prev: Receipt) -> bool:
    """The monotony rule, one definition for both paths: nothing of ``r`` is below ``prev``."""
    u, pu = r.usage, prev.usage
    return (r.issued_at_ms >= prev.issued_at_ms and r.metered_ms >= prev.metered_ms
            and r.amount_micros >= prev.amount_micros and u.cpu_core_ms >= pu.cpu_core_ms
            and u.mem_peak_bytes >= pu.mem_peak_bytes and u.gpu_ms >= pu.gpu_ms
            and u.gpu_mem_peak_bytes >= pu.gpu_mem_peak_bytes and u.gpu_sm_pct_ms >= pu.gpu_sm_pct_ms
            and u.energy_mj >= pu.energy_mj)


def _decreased(r: Receipt, prev: Receipt) -> list[str]:
    names = [n for n in ("issued_at_ms", "metered_ms", "amount_micros") if getattr(r, n) < getattr(prev, n)]
    return names + [n for n in _COUNTERS if getattr(r.usage, n) < getattr(prev.usage, n)]
