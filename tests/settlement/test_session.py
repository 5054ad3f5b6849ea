"""The live receipt loop: issued chains always verify; the exposure cap bounds what a silent buyer owes."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import Signed, countersign, sign_record
from p2p.receipt_records import BUYER_UNRESPONSIVE, COMPLETED, Usage
from settlement.billing import amount_due, metered_within, unsigned_window_ms
from settlement.chain import verify_chain
from settlement.session import PAUSE, RESUME, RUN, STOP, ExposureGuard, ReceiptIssuer, ReceiptVerifier
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("provider"), key_from_label("buyer")
_, _, AGREEMENT = make_agreement(P, B)
T0 = AGREEMENT.record.created_at_ms


def usage(cpu=0, mem=0):
    return Usage(cpu, mem, 0, 0, 0, 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-500, 3000), st.integers(0, 5000), st.integers(0, 1 << 30)), min_size=1,
                max_size=10))
def test_issued_chains_always_verify_whatever_the_meter_says(steps):
    issuer = ReceiptIssuer(AGREEMENT)
    verifier = ReceiptVerifier(AGREEMENT, T0)
    chain, metered, now = [], 0, T0 + 100
    for i, (dm, cpu, mem) in enumerate(steps):
        metered += dm  # may go backwards or race ahead of wall time
        now += 1000
        final = (COMPLETED, 0, b"\4" * 32) if i == len(steps) - 1 else None
        r = issuer.next(max(metered, 0), usage(cpu * (i + 1), mem), now, final=final)
        signed = sign_record(r, P)
        assert verifier.check(signed, now) == []
        verifier.accept(signed)
        issuer.issued(r, signed.body)
        chain.append(countersign(signed, B))
    assert verify_chain(AGREEMENT, chain).ok


def test_metered_within_is_the_largest_within_the_ceiling():
    """The guard's unsigned ceiling under the cap (settlement.billing.metered_within)."""
    for ceiling, price in ((0, 7), (1, 7), (5000, 110), (123_456, 999), (10, 1)):
        m = metered_within(ceiling, price)
        assert amount_due(m, price) <= ceiling < amount_due(m + 1, price)


def test_exposure_guard_pauses_then_stops_a_silent_buyer():
    ag = AGREEMENT.record
    guard = ExposureGuard.for_agreement(ag)
    t = ag.terms
    guard.sent(1, 110, now_ms=0)
    guard.countersigned(1, 110, 1000)
    assert guard.decide(1000, 110) == RUN
    guard.sent(2, 220, now_ms=2000)  # never countersigned
    assert guard.decide(2000 + t.countersign_timeout_ms, 220) == RUN
    assert guard.decide(2001 + t.countersign_timeout_ms, 220) == PAUSE
    assert guard.decide(2001 + t.countersign_timeout_ms + t.grace_ms, 220) == PAUSE
    assert guard.decide(2002 + t.countersign_timeout_ms + t.grace_ms, 220) == STOP


def test_a_late_countersignature_resumes():
    guard = ExposureGuard.for_agreement(AGREEMENT.record)
    guard.sent(1, 110, 0)
    assert guard.decide(10_000, 110) == PAUSE
    guard.countersigned(1, 110, 1000)
    assert guard.decide(10_001, 110) == RESUME and guard.decide(10_002, 110) == RUN


def test_pause_before_the_unsigned_amount_would_pass_the_cap():
    ag = replace(AGREEMENT.record, terms=replace(AGREEMENT.record.terms, exposure_cap_micros=250))
    guard = ExposureGuard.for_agreement(ag)  # price 110/s, interval 1 s
    assert guard.decide(0, 0) == RUN
    assert guard.decide(0, 140) == RUN  # 140 + 110 = 250: at the cap, not past it
    assert guard.decide(0, 141) == PAUSE


def test_silent_buyer_owes_at_most_the_cap_and_the_audit_accepts_it():
    issuer = ReceiptIssuer(AGREEMENT)
    guard = ExposureGuard.for_agreement(AGREEMENT.record)
    chain, now = [], T0 + 100
    for seq in range(1, 4):  # three countersigned seconds
        now += 1000
        r = issuer.next(seq * 1000, usage(seq * 900), now)
        s = sign_record(r, P)
        issuer.issued(r, s.body)
        chain.append(countersign(s, B))
        guard.sent(r.seq, r.amount_micros, now)
        guard.countersigned(r.seq, r.amount_micros, r.metered_ms)
    # The buyer goes silent: receipt 4 is never countersigned; the job kept running for 20 more seconds
    # before the provider stopped it.
    now += 1000
    pending = issuer.next(4000, usage(3600), now)
    s = sign_record(pending, P)
    issuer.issued(pending, s.body)
    chain.append(s)
    final = issuer.next(23_000, usage(20_000), now + 20_000, final=(BUYER_UNRESPONSIVE, None, None),
                        max_metered_ms=guard.unsigned_ceiling_ms())
    chain.append(sign_record(final, P))
    report = verify_chain(AGREEMENT, chain)
    assert report.ok, report.findings
    assert report.amount_micros == guard.cosigned_amount  # the co-signed debt; the rest is apart
    t = AGREEMENT.record.terms
    assert final.metered_ms == 3000 + unsigned_window_ms(t.interval_ms, t.countersign_timeout_ms, t.grace_ms)
    assert 0 < report.unsigned_owed_micros == report.unsigned_claim_micros <= t.exposure_cap_micros


def test_buyer_refuses_time_it_did_not_see_pass():
    issuer = ReceiptIssuer(AGREEMENT)
    verifier = ReceiptVerifier(AGREEMENT, started_at_ms=T0 + 50_000)  # the buyer started much later
    r = issuer.next(40_000, usage(), T0 + 60_000)
    findings = verifier.check(sign_record(r, P), now_ms=T0 + 51_000)
    assert [f.rule for f in findings] == ["metered_exceeds_wall"]
    forged = Signed(sign_record(r, P).body, r, (bytes(64),))
    assert [f.rule for f in verifier.check(forged, T0 + 60_000)] == ["receipt_signature"]


def test_durations_are_monotonic_so_a_wall_clock_stepping_back_refuses_nothing():
    """Issue 13, L1: the buyer's checks take the monotonic clock for durations; the wall clock, which
    here steps back 5 s in the middle of the job, only feeds the skew estimate."""
    issuer = ReceiptIssuer(AGREEMENT)
    mono0, wall0 = 7_000, T0 + 200  # the buyer's monotonic clock and wall clock when the job may start
    verifier = ReceiptVerifier(AGREEMENT, started_at_ms=mono0)
    for n in range(1, 6):
        r = issuer.next(n * 1000, usage(n * 900), T0 + 200 + n * 1000)
        signed = sign_record(r, P)
        stepped = -5000 if n >= 3 else 0
        assert verifier.check(signed, now_ms=mono0 + n * 1000 + 20, wall_ms=wall0 + n * 1000 + 20 + stepped) == []
        issuer.issued(r, signed.body)
        verifier.accept(signed)
    assert verifier.clock_note() == "your clock is 5 s behind the provider's"


def test_a_clock_ahead_of_the_providers_is_named_and_a_small_difference_is_not():
    issuer = ReceiptIssuer(AGREEMENT)
    r = issuer.next(1000, usage(900), T0 + 1200)
    for ahead, note in ((30_000, "your clock is 30 s ahead of the provider's"), (150, None), (-1999, None)):
        verifier = ReceiptVerifier(AGREEMENT, started_at_ms=0)
        assert verifier.check(sign_record(r, P), now_ms=1100, wall_ms=r.issued_at_ms + ahead) == []
        assert verifier.clock_note() == note


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.sampled_from([0, 0, -5000, -60_000, 5000, 10 ** 10])),
                min_size=1, max_size=8))
def test_a_provider_wall_clock_that_steps_never_makes_an_issued_receipt_break_a_rule(steps):
    """Issue 13, L1/H3: issued_at is held inside the agreement's timeline, so a provider whose wall clock
    steps back before the agreement or leaps past its end still issues a chain that verifies."""
    issuer = ReceiptIssuer(AGREEMENT)
    chain, metered, now = [], 0, T0 + 100
    for i, (dm, jump) in enumerate(steps):
        metered += dm
        now += 1000 + jump
        final = (COMPLETED, 0, b"\4" * 32) if i == len(steps) - 1 else None
        r = issuer.next(metered, usage(), now, final=final)
        signed = sign_record(r, P)
        issuer.issued(r, signed.body)
        chain.append(countersign(signed, B))
    report = verify_chain(AGREEMENT, chain)
    assert report.ok, report.findings
