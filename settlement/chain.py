"""Receipt-chain verification (pure): is this sequence of receipts a valid history of this agreement, and
what is owed? docs/PROTOCOL.md §5 is the specification; each rule below is a row of its table.

The per-receipt rules (sequence, link, monotony, amount, physical bounds, state, timeline) are
settlement.rules'. This module adds what needs the whole chain, in this order:

Rule A (the root): the agreement carries a valid provider signature (else ``agreement_signature``, and
no receipt is examined: nothing below a forged root can be checked) and a valid buyer countersignature
(else ``agreement_not_countersigned``; a bad countersignature is ``agreement_signature``).
Rule B (admission), per receipt in the order given; the first that applies is its one finding, and the
receipt takes no part in the chain:
  ``wrong_agreement`` (its body names another agreement: spliced in from elsewhere),
  ``wrong_parties`` (it names this agreement but other keys as provider or buyer: Rule S),
  ``receipt_signature`` (the provider's signature fails: Rule S),
  ``duplicate`` (the same body again), ``equivocation`` (another body for a seq already taken: both are
  validly signed by this agreement's provider, so the provider signed two histories; the first keeps
  the slot).
  A buyer countersignature that fails is ``receipt_signature`` too, but the receipt is admitted, as one
  the buyer did not countersign.
Rule S (a receipt of this agreement that fails its signature or names other parties): it does not take
part in the chain, but its seq counts as present: no ``seq_gap`` is reported for its slot, and the next
receipt's ``prev`` is not checked (it has nothing verified to link to). So one forged or damaged receipt
is one finding.
Rule O (order): the chain is ordered by the signed ``seq``; an input that lists a receipt after one with
a higher seq gets one ``out_of_order`` finding for it, and the chain is checked in seq order. Merged
from several inputs (``inputs``), order is judged within each input, over every receipt it lists.
Rule F (final): the first final receipt ends the chain; each admitted receipt after it is ``after_final``
(one finding) and counts for nothing.
Rule U (``unfounded_unresponsive``): a ``buyer_unresponsive`` final the buyer did not countersign, closing
or not, must follow at least one other receipt the buyer did not countersign after the last one it
did, and be issued at least ``grace_ms`` after the first of them: the guard stops a job only
``grace_ms`` after pausing it, and pauses it only for a receipt left unsigned (settlement.session Rule 2).
- unsigned_final: a final receipt the buyer did not countersign may claim at most the last
  countersigned amount plus the agreed exposure cap.

What is owed (Rule W, one function of the chain): nothing at all unless the agreement passes Rule A in
full. Otherwise, over the admitted receipts up to the first final, in two parts never added together:
- the *co-signed debt*: the amount of the last receipt the buyer countersigned (``amount_micros``);
- the *unsigned claim*: whatever the provider claims beyond it in receipts the buyer did not
  countersign, whatever their state or reason, owed up to settlement.billing's Rule 3 ceiling and no
  further (``unsigned_owed_micros``, beside the claimed ``unsigned_claim_micros``).
Findings do not change these figures: they mark the chain (a statement entry carries their count and a
payment rail holds such entries back).
A final receipt claiming nothing beyond the last countersigned amount is a *closing* receipt: it ends
the chain, withdraws the pending claims before it (so it is exempt from ``decreasing`` and from the
timeline's end) and leaves no unsigned claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from hashlib import sha256

from p2p.envelope import Signed, domain
from p2p.identity import signature_checker
from p2p.market_records import Agreement
from p2p.receipt_records import BUYER_UNRESPONSIVE, FINAL, RUNNING, Receipt
from settlement.billing import metered_within, unsigned_ceiling
from settlement.rules import ChainChecker, ChainReport, Finding

__all__ = ["ChainChecker", "ChainReport", "Finding", "verify_chain"]


# The audit's hot loop checks receipt signatures directly (same bytes as Signed.signed_message).
_PROVIDER_DOMAIN, _BUYER_DOMAIN = domain(Receipt, "provider"), domain(Receipt, "buyer")


def verify_chain(agreement: Signed[Agreement], receipts: Sequence[Signed[Receipt]],
                 inputs: Sequence[int] | None = None) -> ChainReport:
    """Verify an agreement and its receipts (in the order an input gave them) and say what is owed.

    ``inputs``, for receipts merged from several inputs (settlement.audit), gives the input of each:
    order is then judged within each input (Rule O)."""
    ag = agreement.record
    ag_id = sha256(agreement.body).digest()
    report = ChainReport(ag_id, ag.provider, ag.buyer, ag.price_micros_per_s)
    report.receipts = len(receipts) if inputs is None else sum(1 for i in inputs if i >= 0)
    findings = report.findings
    check = signature_checker()
    for index in range(len(agreement.sigs)):  # Rule A
        if not check(agreement.signer_public(index), agreement.signed_message(index), agreement.sigs[index]):
            findings.append(Finding("agreement_signature", f"the {agreement.roles()[index]} signature is invalid"))
            return report  # nothing can be trusted below a forged root
    if not agreement.is_complete:
        findings.append(Finding("agreement_not_countersigned", "the buyer never countersigned the agreement"))

    chain, failed = _admitted(ag, ag_id, receipts, inputs, findings, check)
    checker = ChainChecker(ag, ag_id)
    cosigned: Receipt | None = None
    cosigned_id: bytes | None = None
    tail_unsigned: list[tuple[Receipt, bytes]] = []
    for r, rid, countersigned in chain:
        seq = r.seq
        if checker.final:  # Rule F
            findings.append(Finding("after_final", "a receipt follows the final receipt", seq, rid))
            continue
        if seq > checker.next_seq and all(s in failed for s in range(checker.next_seq, seq)):
            checker.skip(seq - 1)  # Rule S: the slots before it held receipts that failed their signature
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
        _unresponsive(report, ag, tail_unsigned)
        _unsigned_claim(report, checker, cosigned, tail_unsigned)
    if checker.last is None:
        report.state = "empty"
    elif checker.final:
        report.state = f"final:{checker.last.reason}"
    else:
        report.state = RUNNING
    if not agreement.is_complete:  # Rule W: no contract, nothing owed
        report.billed_ms = report.amount_micros = report.unsigned_owed_micros = report.unsigned_owed_ms = 0
    return report


def _admitted(ag: Agreement, ag_id: bytes, receipts: Sequence[Signed[Receipt]], inputs: Sequence[int] | None,
              findings: list[Finding], check: Callable[[bytes, bytes, bytes], bool]
              ) -> tuple[list[tuple[Receipt, bytes, bool]], set[int]]:
    """Rules B and O: the receipts that take part in the chain, in seq order, each with its id and whether
    the buyer's countersignature holds; and the seqs of receipts that failed their signature (Rule S)."""
    provider, buyer = parties = (ag.provider, ag.buyer)
    chain: list[tuple[Receipt, bytes, bool]] = []
    seen: dict[int, bytes] = {}
    failed: set[int] = set()
    top = 0
    tops: dict[int, int] = {}  # with several inputs: the highest seq each has listed so far
    unordered = False
    for index, signed in enumerate(receipts):
        r, body, sigs = signed.record, signed.body, signed.sigs
        if inputs is not None and inputs[index] < 0:  # a copy merged into an earlier input's: order only
            if r.agreement_id == ag_id and r.provider == provider and r.buyer == buyer:
                source = -1 - inputs[index]
                if r.seq < tops.get(source, 0):
                    findings.append(Finding("out_of_order", f"seq {r.seq} listed after seq {tops[source]} in one "
                                            "input", r.seq, sha256(body).digest()))
                tops[source] = max(tops.get(source, 0), r.seq)
            continue
        rid, seq = sha256(body).digest(), r.seq
        if r.agreement_id != ag_id:
            others = "" if (r.provider, r.buyer) == parties else ", signed by other parties"
            findings.append(Finding("wrong_agreement", f"belongs to agreement {r.agreement_id.hex()[:16]}{others}",
                                    seq, rid))
            continue
        if r.provider != provider or r.buyer != buyer:
            findings.append(Finding("wrong_parties", "provider or buyer differs from the agreement's", seq, rid))
            failed.add(seq)
            continue
        if not check(r.provider, _PROVIDER_DOMAIN + body, sigs[0]):
            findings.append(Finding("receipt_signature", "the provider signature is invalid", seq, rid))
            failed.add(seq)
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
        seen[seq] = rid
        if inputs is not None:
            source = inputs[index]
            if seq < tops.get(source, 0):
                findings.append(Finding("out_of_order", f"seq {seq} listed after seq {tops[source]} in one input",
                                        seq, rid))
            tops[source] = max(tops.get(source, 0), seq)
            unordered = unordered or seq < top
            top = max(top, seq)
        elif seq < top:
            findings.append(Finding("out_of_order", f"seq {seq} listed after seq {top}", seq, rid))
            unordered = True
        else:
            top = seq
        chain.append((r, rid, countersigned))
    if unordered:  # else the seqs already rise: each is above every one before it
        chain.sort(key=lambda c: c[0].seq)
    return chain, failed


def _unresponsive(report: ChainReport, ag: Agreement, tail: list[tuple[Receipt, bytes]]) -> None:
    """Rule U: a final that blames the buyer, unsigned by it, needs an earlier receipt left unsigned."""
    last, last_id = tail[-1]
    if last.state != FINAL or last.reason != BUYER_UNRESPONSIVE:
        return
    if len(tail) == 1:
        report.findings.append(Finding("unfounded_unresponsive", "no receipt before it was left uncountersigned",
                                       last.seq, last_id))
        return
    first = tail[0][0]
    waited = last.issued_at_ms - first.issued_at_ms
    if waited < ag.terms.grace_ms:
        report.findings.append(Finding("unfounded_unresponsive", f"issued {waited} ms after receipt {first.seq} "
                                       f"was left uncountersigned, within the grace of {ag.terms.grace_ms} ms",
                                       last.seq, last_id))


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
    # Never below 0, even where a countersigned amount broke wrong_amount (docs/PROTOCOL.md §5, "owed").
    report.unsigned_owed_micros = max(0, owed - base)
    report.unsigned_owed_ms = max(0, min(last.metered_ms, base_ms + checker.window_ms,
                                         metered_within(ceiling, ag.price_micros_per_s)) - base_ms)
    report.unsigned_seq = last.seq
    report.unsigned_receipt_id = last_id
    report.unsigned_state = last.state if last.state != FINAL else f"final:{last.reason}"
