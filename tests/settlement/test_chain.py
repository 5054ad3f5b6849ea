"""Receipt-chain rules, one table row per rule (settlement.chain's docstring is the specification)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import Signed, countersign, sign_record
from p2p.receipt_records import BUYER_UNRESPONSIVE, COMPLETED, FINAL, PROVIDER_RESTART, Receipt, Usage
from settlement.billing import (
    START_ALLOWANCE_MS,
    amount_due,
    energy_bound_mj,
    gpu_memory_bound_bytes,
    memory_bound_bytes,
    sm_pct_bound,
    unsigned_window_ms,
    usage_bound,
)
from settlement.chain import ChainChecker, verify_chain
from settlement.testing import TERMS, key_from_label, make_agreement, next_receipt

P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, AGREEMENT = make_agreement(P, B)
WINDOW_MS = unsigned_window_ms(TERMS.interval_ms, TERMS.countersign_timeout_ms, TERMS.grace_ms)
TIMELINE_END = AGREEMENT.record.created_at_ms + START_ALLOWANCE_MS + AGREEMENT.record.max_duration_ms + WINDOW_MS


def honest(n=4, final=True):
    out, prev, prev_id = [], None, AGREEMENT.record_id
    for i in range(n):
        r = next_receipt(AGREEMENT, prev, prev_id, final=final and i == n - 1)
        out.append(r)
        prev, prev_id = r, hashlib.sha256(r.encode()).digest()
    return out


def signed(records, cosign=None, relink=False):
    """Sign records as given; ``cosign[i]`` False leaves receipt i provider-only; ``relink`` fixes prev."""
    out, prev_id = [], AGREEMENT.record_id
    for i, r in enumerate(records):
        if relink:
            r = replace(r, prev=prev_id)
        s = sign_record(r, P)
        if cosign is None or cosign[i]:
            s = countersign(s, B)
        out.append(s)
        prev_id = s.record_id
    return out


def amount_fixed(r):
    return replace(r, amount_micros=amount_due(r.metered_ms, AGREEMENT.record.price_micros_per_s))


def rules(receipts, agreement=AGREEMENT):
    return sorted({f.rule for f in verify_chain(agreement, receipts).findings})


def test_honest_chain_verifies_and_bills_the_last_receipt():
    report = verify_chain(AGREEMENT, signed(honest(4)))
    assert report.ok, report.findings
    assert (report.state, report.billed_ms, report.last_seq) == ("final:completed", 4000, 4)
    assert report.amount_micros == amount_due(4000, AGREEMENT.record.price_micros_per_s)


def _forge_sig(receipts, index, which):
    s = receipts[index]
    sigs = list(s.sigs)
    sigs[which] = bytes(64)
    receipts[index] = Signed(s.body, s.record, tuple(sigs))
    return receipts


def _swap(receipts, i, j):
    receipts[i], receipts[j] = receipts[j], receipts[i]
    return receipts


def _equivocate(_):
    rs = honest(4)
    other = replace(rs[1], usage=replace(rs[1].usage, mem_peak_bytes=rs[1].usage.mem_peak_bytes + 1))
    chain = signed(rs)
    return chain[:2] + signed([other], relink=False) + chain[2:]


CASES = {
    "forged provider signature": (lambda rs: _forge_sig(signed(rs), 1, 0), ["receipt_signature"]),
    "forged buyer signature": (lambda rs: _forge_sig(signed(rs), 1, 1), ["receipt_signature"]),
    "reordered": (lambda rs: _swap(signed(rs), 1, 2), ["out_of_order"]),
    "missing receipt": (lambda rs: (lambda c: c[:1] + c[2:])(signed(rs)), ["seq_gap"]),
    "duplicated receipt": (lambda rs: (lambda c: c[:2] + c[1:])(signed(rs)), ["duplicate"]),
    "equivocation": (_equivocate, ["equivocation"]),
    "decreasing amount": (lambda rs: signed(rs[:2] + [amount_fixed(replace(rs[2], metered_ms=1500))] + rs[3:],
                                              relink=True), ["decreasing", "usage_exceeds_allocation"]),
    "wrong arithmetic": (lambda rs: signed(rs[:1] + [replace(rs[1], amount_micros=rs[1].amount_micros + 1)] + rs[2:],
                                           relink=True), ["wrong_amount"]),
    "broken link": (lambda rs: signed(rs[:2] + [replace(rs[2], prev=b"\1" * 32)] + rs[3:]), ["broken_link"]),
    "wrong agreement": (lambda rs: signed([replace(rs[0], agreement_id=b"\2" * 32)] + rs[1:], relink=True),
                        ["seq_gap", "wrong_agreement"]),
    "wrong parties": (lambda rs: [countersign(sign_record(replace(rs[0], buyer=key_from_label("x").public), P),
                                              key_from_label("x"))] + signed(rs[1:]), ["wrong_parties"]),
    "metered beyond wall time": (lambda rs: signed([amount_fixed(replace(rs[0], metered_ms=5000))] + rs[1:],
                                                   relink=True), ["decreasing", "metered_exceeds_wall"]),
    "cpu beyond allocation": (lambda rs: signed([replace(rs[0], usage=replace(rs[0].usage, cpu_core_ms=3000))]
                                                + rs[1:], relink=True), ["decreasing", "usage_exceeds_allocation"]),
    "gpu time without gpus": (lambda rs: signed(rs[:3] + [replace(rs[3], usage=replace(rs[3].usage, gpu_ms=1))],
                                                relink=True), ["usage_exceeds_allocation"]),
    "running with a reason": (lambda rs: signed([replace(rs[0], reason="completed")] + rs[1:], relink=True),
                              ["bad_state"]),
    "completed without digest": (lambda rs: signed(rs[:3] + [replace(rs[3], output_digest=None)], relink=True),
                                 ["bad_state"]),
    "unknown reason": (lambda rs: signed(rs[:3] + [replace(rs[3], reason="because")], relink=True),
                       ["bad_state"]),
    "unknown state": (lambda rs: signed(rs[:3] + [replace(rs[3], state="paused")], relink=True), ["bad_state"]),
    "receipt after final": (lambda rs: signed(rs[:2] + [replace(rs[2], state=FINAL, reason="completed",
                                                                exit_code=0, output_digest=b"\3" * 32)] + rs[3:],
                                              relink=True), ["after_final"]),
    "unsigned final over cap": (lambda rs: signed(rs[:3] + [amount_fixed(replace(
        rs[3], reason="provider_fault", metered_ms=rs[2].metered_ms + 60_000, issued_at_ms=rs[3].issued_at_ms
        + 60_000, exit_code=None, output_digest=None))], cosign=[1, 1, 1, 0], relink=True), ["unsigned_final"]),
    "issued before the agreement": (lambda rs: signed([replace(rs[0], issued_at_ms=AGREEMENT.record.created_at_ms
                                                               - 1, metered_ms=0, amount_micros=0)] + rs[1:],
                                                      relink=True), ["outside_timeline", "usage_exceeds_allocation"]),
    "issued after the agreement's timeline": (lambda rs: signed(rs[:3] + [replace(rs[3], issued_at_ms=TIMELINE_END
                                                                                  + 1)], relink=True),
                                              ["outside_timeline"]),
}


@pytest.mark.parametrize("name", CASES)
def test_each_rule_is_reported(name):
    build, expected = CASES[name]
    assert rules(build(honest(4))) == expected


def test_an_unsigned_claim_is_owed_apart_within_the_window_whatever_its_reason():
    """One rule (settlement.billing Rule 3): the claim past the last countersigned receipt is owed up to
    the unsigned window's worth, shown apart from the co-signed debt, for every reason."""
    rs = honest(4)
    price = AGREEMENT.record.price_micros_per_s
    for reason in (COMPLETED, "buyer_cancel", "provider_fault"):
        last = replace(rs[3], reason=reason, exit_code=0 if reason == COMPLETED else None,
                       output_digest=rs[3].output_digest if reason == COMPLETED else None)
        report = verify_chain(AGREEMENT, signed(rs[:3] + [last], cosign=[1, 1, 1, 0], relink=True))
        assert report.ok, (reason, report.findings)
        assert report.amount_micros == rs[2].amount_micros and report.last_seq == 3  # co-signed debt only
        assert report.unsigned_claim_micros == report.unsigned_owed_micros == last.amount_micros - rs[2].amount_micros
        assert report.unsigned_owed_ms == last.metered_ms - rs[2].metered_ms and report.unsigned_seq == 4
        assert report.state == f"final:{reason}" and report.pending == 1
    # A claim past the window (within the cap) is owed only up to the window.
    far = amount_fixed(replace(rs[3], metered_ms=rs[2].metered_ms + WINDOW_MS + 20_000, reason="provider_fault",
                               issued_at_ms=rs[3].issued_at_ms + WINDOW_MS + 20_000, exit_code=None,
                               output_digest=None))
    report = verify_chain(AGREEMENT, signed(rs[:3] + [far], cosign=[1, 1, 1, 0], relink=True))
    assert report.ok, report.findings
    assert report.unsigned_owed_micros == amount_due(rs[2].metered_ms + WINDOW_MS, price) - rs[2].amount_micros
    assert report.unsigned_claim_micros == far.amount_micros - rs[2].amount_micros > report.unsigned_owed_micros


def test_an_invented_debt_at_any_cap_is_owed_no_more_than_the_window():
    """H3: a provider states cap 2^63, runs nothing, and signs a final claim for the whole duration."""
    ag = replace(AGREEMENT.record, terms=replace(TERMS, exposure_cap_micros=(1 << 63)))
    huge = countersign(sign_record(ag, P), B)
    price, duration = ag.price_micros_per_s, ag.max_duration_ms
    claim = Receipt(agreement_id=huge.record_id, provider=P.public, buyer=B.public, seq=1, prev=huge.record_id,
                    issued_at_ms=ag.created_at_ms + duration + 1000, metered_ms=duration,
                    usage=Usage(0, 0, 0, 0, 0, 0), amount_micros=amount_due(duration, price), state=FINAL,
                    reason=BUYER_UNRESPONSIVE, exit_code=None, output_digest=None)
    report = verify_chain(huge, [sign_record(claim, P)])
    # Nothing was ever left uncountersigned before it, so its reason is unfounded too (Rule U).
    assert [f.rule for f in report.findings] == ["unfounded_unresponsive"]
    assert report.amount_micros == 0 and report.billed_ms == 0
    assert report.unsigned_claim_micros == amount_due(duration, price)
    assert report.unsigned_owed_micros == amount_due(WINDOW_MS, price) < report.unsigned_claim_micros // 50


def test_unsigned_closing_receipt_that_claims_nothing_new_is_accepted():
    rs = honest(3, final=False)
    closing = replace(rs[2], seq=4, state=FINAL, reason=PROVIDER_RESTART, issued_at_ms=rs[2].issued_at_ms + 500)
    report = verify_chain(AGREEMENT, signed(rs + [closing], cosign=[1, 1, 1, 0], relink=True))
    assert report.ok, report.findings
    assert report.amount_micros == rs[2].amount_micros and report.state == "final:provider_restart"


def test_pending_tail_is_an_unsigned_claim_never_cosigned_debt():
    rs = honest(4, final=False)
    report = verify_chain(AGREEMENT, signed(rs, cosign=[1, 1, 0, 0]))
    assert report.ok and report.pending == 2
    assert report.last_seq == 2 and report.state == "running" and report.amount_micros == rs[1].amount_micros
    assert report.unsigned_owed_micros == rs[3].amount_micros - rs[1].amount_micros and report.unsigned_seq == 4


def test_agreement_without_countersignature_is_reported():
    provider_only = Signed(AGREEMENT.body, AGREEMENT.record, AGREEMENT.sigs[:1])
    assert rules(signed(honest(2)), provider_only) == ["agreement_not_countersigned"]


def test_forged_agreement_stops_the_audit():
    forged = Signed(AGREEMENT.body, AGREEMENT.record, (bytes(64), AGREEMENT.sigs[1]))
    report = verify_chain(forged, signed(honest(2)))
    assert [f.rule for f in report.findings] == ["agreement_signature"] and report.amount_micros == 0


def test_empty_chain_owes_nothing():
    report = verify_chain(AGREEMENT, [])
    assert report.ok and report.state == "empty" and report.amount_micros == 0


def test_exceeding_max_duration():
    ag = replace(AGREEMENT.record, max_duration_ms=1000)
    short = countersign(sign_record(ag, P), B)
    rs, prev, prev_id = [], None, short.record_id
    for _ in range(3):
        r = next_receipt(short, prev, prev_id)
        rs.append(r)
        prev, prev_id = r, hashlib.sha256(r.encode()).digest()
    report = verify_chain(short, signed(rs, relink=False))
    assert {f.rule for f in report.findings} == {"exceeds_max_duration", "broken_link"} or \
        "exceeds_max_duration" in {f.rule for f in report.findings}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), min_size=1, max_size=12), st.integers(1, 10_000))
def test_property_amount_is_exact_and_cumulative(steps, price):
    total = 0
    for step in steps:
        total += step
        assert amount_due(total, price) == total * price // 1000
    assert amount_due(total, price) >= sum(step * price // 1000 for step in steps)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(200, 3000), min_size=1, max_size=8))
def test_property_honest_metering_always_verifies(steps):
    checker = ChainChecker(AGREEMENT.record, AGREEMENT.record_id)
    prev, prev_id = None, AGREEMENT.record_id
    for step in steps:
        r = next_receipt(AGREEMENT, prev, prev_id, step_ms=step)
        rid = hashlib.sha256(r.encode()).digest()
        assert checker.check_content(r, rid) == []
        checker.advance(r, rid)
        prev, prev_id = r, rid


def test_usage_bound_tolerance_is_stated():
    assert usage_bound(1000, 1000) == 1000 + 10 + 250
    assert usage_bound(0, 2000) == 500
    assert usage_bound(10_000, 500) == 5000 + 50 + 250
    assert Usage(0, 0, 0, 0, 0, 0).gpu_ms == 0


def test_closing_receipt_withdraws_pending_claims_after_a_provider_restart():
    rs = honest(3, final=False)
    closing = replace(rs[1], seq=4, state=FINAL, reason=PROVIDER_RESTART, issued_at_ms=rs[2].issued_at_ms + 900)
    provider_view = signed(rs + [closing], cosign=[1, 1, 0, 0], relink=True)
    report = verify_chain(AGREEMENT, provider_view)
    assert report.ok, report.findings
    assert report.amount_micros == rs[1].amount_micros and report.pending == 1
    # The buyer had countersigned receipt 3 before the crash: merged, the buyer owes what it signed.
    merged = provider_view[:2] + [countersign(provider_view[2], B), provider_view[3]]
    report = verify_chain(AGREEMENT, merged)
    assert report.ok, report.findings
    assert report.amount_micros == rs[2].amount_micros and report.state == "final:provider_restart"

def _unresponsive_tail(first_unsigned_at_ms, final_at_ms, cosign_final=False):
    """Receipts 1-2 countersigned, 3 unsigned, then a buyer_unresponsive final at the times given."""
    rs = honest(4)
    r3 = replace(rs[2], issued_at_ms=first_unsigned_at_ms)
    final = replace(rs[3], reason=BUYER_UNRESPONSIVE, exit_code=None, output_digest=None, issued_at_ms=final_at_ms)
    return verify_chain(AGREEMENT, signed([rs[0], rs[1], r3, final], cosign=[1, 1, 0, cosign_final], relink=True))


def test_buyer_unresponsive_runs_from_the_first_unsigned_receipt_for_at_least_the_grace():
    """Rule U: at the boundary (exactly grace_ms after the first unsigned receipt) it holds; a millisecond
    earlier it is unfounded; countersigned by the buyer, it is the buyer's word and not checked."""
    start = honest(4)[2].issued_at_ms
    assert _unresponsive_tail(start, start + TERMS.grace_ms).ok
    early = _unresponsive_tail(start, start + TERMS.grace_ms - 1)
    assert [f.rule for f in early.findings] == ["unfounded_unresponsive"] and early.findings[0].seq == 4
    assert _unresponsive_tail(start, start + TERMS.grace_ms - 1, cosign_final=True).ok
    # With nothing left unsigned before it, closing or not, it is unfounded.
    rs = honest(3, final=False)
    closing = replace(rs[2], seq=4, state=FINAL, reason=BUYER_UNRESPONSIVE, issued_at_ms=rs[2].issued_at_ms + 9000)
    report = verify_chain(AGREEMENT, signed(rs + [closing], cosign=[1, 1, 1, 0], relink=True))
    assert [f.rule for f in report.findings] == ["unfounded_unresponsive"]


def _with_usage(**usage):
    (r,) = honest(1)
    return signed([replace(r, usage=replace(r.usage, **usage))])


def test_every_usage_counter_has_a_bound_from_the_agreement():
    """settlement.billing Rule 2b, each at its bound and one over (boundary and positive case)."""
    memory = memory_bound_bytes(AGREEMENT.record.resources.memory_mib)
    assert verify_chain(AGREEMENT, _with_usage(mem_peak_bytes=memory)).ok
    cases = {"mem_peak_bytes": memory + 1, "gpu_mem_peak_bytes": 1, "gpu_sm_pct_ms": 1, "energy_mj": 1}
    for name, value in cases.items():  # no GPUs agreed: every GPU counter is 0
        report = verify_chain(AGREEMENT, _with_usage(**{name: value}))
        assert [f.rule for f in report.findings] == ["usage_exceeds_allocation"], (name, report.findings)


def test_gpu_counters_are_bounded_by_the_gpus_agreed():
    ag = replace(AGREEMENT.record, resources=replace(AGREEMENT.record.resources, gpus=2))
    gpu_agreement = countersign(sign_record(ag, P), B)
    r = next_receipt(gpu_agreement, None, gpu_agreement.record_id)
    elapsed = r.issued_at_ms - ag.created_at_ms
    at_bound = replace(r, usage=replace(r.usage, gpu_ms=usage_bound(r.metered_ms, 2000),
                                        gpu_sm_pct_ms=sm_pct_bound(r.metered_ms, 2),
                                        gpu_mem_peak_bytes=gpu_memory_bound_bytes(2),
                                        energy_mj=energy_bound_mj(elapsed, 2)))
    assert verify_chain(gpu_agreement, [countersign(sign_record(at_bound, P), B)]).ok
    for name in ("gpu_ms", "gpu_sm_pct_ms", "gpu_mem_peak_bytes", "energy_mj"):
        over = replace(at_bound, usage=replace(at_bound.usage, **{name: getattr(at_bound.usage, name) + 1}))
        report = verify_chain(gpu_agreement, [countersign(sign_record(over, P), B)])
        assert [f.rule for f in report.findings] == ["usage_exceeds_allocation"], name
