"""Receipt-chain verification (pure): is this sequence of receipts a valid history of this agreement?

Rules, each reported as a Finding with the rule's name (docs/PROTOCOL.md, "Receipt chains"):
- agreement_signature / agreement_not_countersigned: the root must carry both valid signatures.
- receipt_signature: every receipt carries a valid provider signature, then (except a pending tail)
  a valid buyer countersignature over the provider's signature.
- wrong_agreement / wrong_parties: a receipt names this agreement and its two parties.
- seq_gap / out_of_order / duplicate / equivocation: ``seq`` runs 1, 2, 3 ... with no gaps; the same
  receipt twice is a duplicate; two different signed receipts for one seq are equivocation.
- broken_link: ``prev`` is the SHA-256 of the previous receipt's body (the agreement id for seq 1).
- decreasing: issued_at, metered time, every usage counter and the amount never decrease.
- wrong_amount: ``amount == amount_due(metered_ms, price)`` exactly (settlement.billing Rule 1).
- metered_exceeds_wall / usage_exceeds_allocation / exceeds_max_duration: physical bounds
  (settlement.billing Rule 2).
- bad_state / after_final: a running receipt has no reason, exit code or digest; a final one has a
  known reason, and ``completed`` has an exit code and an output digest; nothing follows a final one.
- outside_timeline: a receipt is issued no earlier than its agreement and, unless it is a closing
  receipt, no later than the agreement's timeline allows (settlement.billing Rule 4).
- unsigned_final: a final receipt the buyer did not countersign may claim at most the last
  countersigned amount plus the agreed exposure cap.

What is owed comes in two parts that are never added together:
- the *co-signed debt*: the amount of the last receipt the buyer countersigned (``amount_micros``);
- the *unsigned claim*: whatever the provider claims beyond it in receipts the buyer did not
  countersign, whatever their state or reason, owed up to settlement.billing's Rule 3 ceiling and no
  further (``unsigned_owed_micros``, beside the claimed ``unsigned_claim_micros``). A buyer that never
  countersigns thus owes at most the unsigned window's worth (never more than the exposure cap), and a
  provider that invents a claim is owed no more than that, whatever the size it states.
A final receipt claiming nothing beyond the last countersigned amount is a *closing* receipt: it ends
the chain, withdraws the pending claims before it (so it is exempt from ``decreasing`` and from the
timeline's end) and leaves no unsigned claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from market.records import Agreement
from p2p.envelope import Signed, domain
from p2p.identity import signature_checker
from settlement.billing import (
    TOLERANCE_PERCENT,
    amount_due,
    metered_bound,
    metered_within,
    timeline_end_ms,
    unsigned_ceiling,
    unsigned_window_ms,
    usage_bound,
)
from settlement.records import COMPLETED, FINAL, REASONS, RUNNING, Receipt


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
    # The unsigned claim, never part of ``amount_micros`` (see the module docstring).
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
    """

    def __init__(self, agreement: Agreement, agreement_id: bytes) -> None:
        self.agreement = agreement
        self.agreement_id = agreement_id
        self.last: Receipt | None = None
        self.last_id = agreement_id
        self.final = False
        self._gpus_milli = agreement.resources.gpus * 1000
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
        if (self.final or r.seq != (1 if prev is None else prev.seq + 1) or r.prev != self.last_id
                or r.agreement_id != self.agreement_id or (r.provider, r.buyer) != self._parties):
            return False
        if prev is not None and monotonic:
            pu = prev.usage
            if not (r.issued_at_ms >= prev.issued_at_ms and metered >= prev.metered_ms
                    and r.amount_micros >= prev.amount_micros and u.cpu_core_ms >= pu.cpu_core_ms
                    and u.mem_peak_bytes >= pu.mem_peak_bytes and u.gpu_ms >= pu.gpu_ms
                    and u.gpu_mem_peak_bytes >= pu.gpu_mem_peak_bytes and u.gpu_sm_pct_ms >= pu.gpu_sm_pct_ms
                    and u.energy_mj >= pu.energy_mj):
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
        if self._gpus_milli:
            gpu = used * self._gpus_milli // 1000
            if u.gpu_ms > gpu + gpu * TOLERANCE_PERCENT // 100 + self._gpu_tolerance:
                return False
        elif u.gpu_ms or u.gpu_sm_pct_ms:
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
        expected_seq = 1 if prev is None else prev.seq + 1
        if seq != expected_seq:
            bad("seq_gap", f"seq {seq}, expected {expected_seq}")
        elif r.prev != self.last_id:
            bad("broken_link", "prev is not the hash of the previous receipt")
        if prev is not None and monotonic:
            u, pu = r.usage, prev.usage
            if not (r.issued_at_ms >= prev.issued_at_ms and r.metered_ms >= prev.metered_ms
                    and r.amount_micros >= prev.amount_micros and u.cpu_core_ms >= pu.cpu_core_ms
                    and u.mem_peak_bytes >= pu.mem_peak_bytes and u.gpu_ms >= pu.gpu_ms
                    and u.gpu_mem_peak_bytes >= pu.gpu_mem_peak_bytes and u.gpu_sm_pct_ms >= pu.gpu_sm_pct_ms
                    and u.energy_mj >= pu.energy_mj):
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
        if (r.usage.gpu_ms > usage_bound(r.metered_ms, self._gpus_milli) if self._gpus_milli
                else r.usage.gpu_ms or r.usage.gpu_sm_pct_ms):
            bad("usage_exceeds_allocation", f"{r.usage.gpu_ms} GPU-ms with {ag.resources.gpus} GPUs")
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
        self.final = self.final or r.state == FINAL


_COUNTERS = ("cpu_core_ms", "mem_peak_bytes", "gpu_ms", "gpu_mem_peak_bytes", "gpu_sm_pct_ms", "energy_mj")


def _decreased(r: Receipt, prev: Receipt) -> list[str]:
    names = [n for n in ("issued_at_ms", "metered_ms", "amount_micros") if getattr(r, n) < getattr(prev, n)]
    return names + [n for n in _COUNTERS if getattr(r.usage, n) < getattr(prev.usage, n)]


# The audit's hot loop checks receipt signatures directly (same bytes as Signed.signed_message).
_PROVIDER_DOMAIN, _BUYER_DOMAIN = domain(Receipt, "provider"), domain(Receipt, "buyer")


def verify_chain(agreement: Signed[Agreement], receipts: Sequence[Signed[Receipt]]) -> ChainReport:
    """Verify an agreement and its receipts, in the order given, and say what is owed."""
    ag = agreement.record
    ag_id = sha256(agreement.body).digest()
    report = ChainReport(ag_id, ag.provider, ag.buyer, ag.price_micros_per_s)
    findings = report.findings
    check = signature_checker()
    for index in range(len(agreement.sigs)):
        if not check(agreement.signer_public(index), agreement.signed_message(index), agreement.sigs[index]):
            findings.append(Finding("agreement_signature", f"the {agreement.roles()[index]} signature is invalid"))
            return report  # nothing can be trusted below a forged root
    if not agreement.is_complete:
        findings.append(Finding("agreement_not_countersigned", "the buyer never countersigned the agreement"))

    checker = ChainChecker(ag, ag_id)
    cosigned: Receipt | None = None
    cosigned_id: bytes | None = None
    seen: dict[int, bytes] = {}
    tail_unsigned: list[tuple[Receipt, bytes]] = []
    report.receipts = len(receipts)
    for signed in receipts:
        r, body, sigs = signed.record, signed.body, signed.sigs
        rid, seq = sha256(body).digest(), r.seq
        if not check(r.provider, _PROVIDER_DOMAIN + body, sigs[0]):
            findings.append(Finding("receipt_signature", "the provider signature is invalid", seq, rid))
            continue
        countersigned = len(sigs) == 2
        if countersigned and not check(r.buyer, _BUYER_DOMAIN + body + sigs[0], sigs[1]):
            findings.append(Finding("receipt_signature", "the buyer countersignature is invalid", seq, rid))
            countersigned = False
        if seq in seen:
            if seen[seq] == rid:
                findings.append(Finding("duplicate", "the same receipt appears twice", seq, rid))
            else:
                findings.append(Finding("equivocation", "two different signed receipts for this seq", seq, rid))
            continue
        last = checker.last
        seen[seq] = rid
        if last is not None and seq < last.seq:
            findings.append(Finding("out_of_order", f"seq {seq} after seq {last.seq}", seq, rid))
            continue
        # A final receipt the buyer did not sign, claiming no more than the buyer signed, closes the
        # chain and withdraws any pending claims before it (a provider restarting after a crash).
        closing = (not countersigned and r.state == FINAL
                   and r.amount_micros <= (cosigned.amount_micros if cosigned is not None else 0))
        if not checker._clean(r, not closing):
            findings.extend(checker._findings(r, rid, not closing))
        checker.advance(r, rid)
        if countersigned:
            cosigned, cosigned_id = r, rid
            tail_unsigned.clear()
        else:
            tail_unsigned.append((r, rid))

    if cosigned is not None:
        report.billed_ms = cosigned.metered_ms
        report.amount_micros = cosigned.amount_micros
        report.last_seq = cosigned.seq
        report.last_receipt_id = cosigned_id
    if tail_unsigned:
        _unsigned_claim(report, checker, cosigned, tail_unsigned)
    if checker.last is None:
        report.state = "empty"
    elif checker.final:
        report.state = f"final:{checker.last.reason}"
    else:
        report.state = RUNNING
    return report


def _unsigned_claim(report: ChainReport, checker: ChainChecker, cosigned: Receipt | None,
                    tail: list[tuple[Receipt, bytes]]) -> None:
    """The receipts after the last countersigned one: pending, and what of them is owed (Rule 3 of
    settlement.billing: one rule for every state and reason)."""
    ag = checker.agreement
    last, last_id = tail[-1]
    report.pending = len(tail)
    base_ms, base = (cosigned.metered_ms, cosigned.amount_micros) if cosigned is not None else (0, 0)
    if last.amount_micros <= base:
        if last.state == FINAL:
            report.pending -= 1  # a closing receipt: it withdraws the claims before it
        return
    cap = ag.terms.exposure_cap_micros
    if last.state == FINAL and last.amount_micros > base + cap:
        report.findings.append(Finding("unsigned_final", f"claims {last.amount_micros}, more than the last "
                                       f"countersigned {base} plus the cap {cap}", last.seq, last_id))
    ceiling = unsigned_ceiling(base_ms, base, ag.price_micros_per_s, cap, checker.window_ms)
    owed = min(last.amount_micros, ceiling)
    report.unsigned_claim_micros = last.amount_micros - base
    report.unsigned_owed_micros = owed - base
    report.unsigned_owed_ms = min(last.metered_ms, base_ms + checker.window_ms,
                                  metered_within(ceiling, ag.price_micros_per_s)) - base_ms
    report.unsigned_seq = last.seq
    report.unsigned_receipt_id = last_id
    report.unsigned_state = last.state if last.state != FINAL else f"final:{last.reason}"
