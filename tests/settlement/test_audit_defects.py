"""Issue 16's five bugs, each as the auditor written from docs/PROTOCOL.md met it: the audit trusts only
signed bytes, says what is owed by one rule, and gives one finding per defect."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace

from p2p.envelope import Signed, countersign, sign_record
from p2p.receipt_records import FINAL
from settlement.audit import audit, read_inputs
from settlement.bundle import encode_bundle
from settlement.chain import verify_chain
from settlement.statement import build_statement
from settlement.testing import key_from_label, make_chain, next_receipt, resign, write_store

P, B = key_from_label("provider"), key_from_label("buyer")
P2, B2 = key_from_label("provider-b"), key_from_label("buyer-b")


def rules(report):
    return sorted(f.rule for f in report.findings)


def _bundle(tmp_path, chains, name="a.bundle"):
    path = tmp_path / name
    path.write_bytes(encode_bundle(chains))
    return path


def _audit(*paths):
    return audit(read_inputs(paths))


def test_a_receipt_of_another_agreement_is_reported_as_such_not_as_equivocation(tmp_path):
    a = make_chain(P, B, 3)
    b = make_chain(P2, B2, 3, nonce=b"\x08" * 16)
    stored = a.stored()
    stored.receipts.append(b.receipts[1].to_wire())
    [result] = _audit(_bundle(tmp_path, [stored]))
    r = result.report
    assert rules(r) == ["wrong_agreement"], r.findings
    assert b.agreement.record_id.hex()[:16] in r.findings[0].detail and "other parties" in r.findings[0].detail
    assert r.amount_micros == a.receipts[-1].record.amount_micros and r.state == "final:completed"


def test_a_spliced_receipt_of_another_agreement_sets_nothing_owed(tmp_path):
    a = make_chain(P, B, 3, final=False)
    b = make_chain(P2, B2, 9, nonce=b"\x08" * 16, final=False)
    last = a.receipts[-1]
    # B's receipt, moved after A's last one and re-signed by B's own keys.
    splice = resign(replace(b.receipts[-1].record, seq=4, prev=last.record_id), P2, B2)
    stored = a.stored()
    stored.receipts.append(splice.to_wire())
    [result] = _audit(_bundle(tmp_path, [stored]))
    r = result.report
    assert rules(r) == ["wrong_agreement"]
    assert (r.amount_micros, r.last_seq, r.last_receipt_id) == (last.record.amount_micros, 3, last.record_id)
    entry = build_statement([r], P.public, 1).entries[0]
    assert entry.last_receipt_id == last.record_id and entry.amount_micros == last.record.amount_micros
    assert entry.findings == 1


def test_nothing_is_owed_beyond_a_final():
    a = make_chain(P, B, 3)
    final = a.receipts[-1].record
    after = next_receipt(a.agreement, replace(final, state="running", reason=None, exit_code=None,
                                              output_digest=None), a.receipts[-1].record_id)
    report = verify_chain(a.agreement, [*a.receipts, resign(after, P, B)])
    assert rules(report) == ["after_final"]
    assert (report.amount_micros, report.last_seq, report.state) == (final.amount_micros, 3, "final:completed")
    # Unsigned, and claiming more: still nothing beyond the final.
    report = verify_chain(a.agreement, [*a.receipts, resign(after, P, None)])
    assert rules(report) == ["after_final"] and report.unsigned_receipt_id is None and report.pending == 0


def _db(tmp_path, ev):
    return write_store(tmp_path / "node.db", ev)


def _tamper(path, sql, *params):
    copy = path.with_name("tampered.db")
    shutil.copy(path, copy)
    conn = sqlite3.connect(copy)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute(sql, params)
    conn.commit()
    conn.close()
    return copy


def test_database_columns_are_an_index_the_signed_body_decides(tmp_path):
    ev = make_chain(P, B, 3)
    db = _db(tmp_path, ev)
    [honest] = _audit(db)
    assert honest.report.ok
    for sql, params in [("UPDATE receipts SET agreement_id = ? WHERE seq = 3", (b"\5" * 32,)),
                        ("UPDATE receipts SET seq = 7 WHERE seq = 3", ()),
                        ("UPDATE receipts SET id = ? WHERE seq = 2", (b"\6" * 32,))]:
        results = _audit(_tamper(db, sql, *params))
        assert len(results) == 1, sql
        r = results[0].report
        assert rules(r) == ["column_mismatch"], (sql, r.findings)
        assert (r.state, r.amount_micros, r.last_seq) == (honest.report.state, honest.report.amount_micros, 3), sql


def test_a_database_receipt_whose_agreement_is_absent_is_reported(tmp_path):
    ev = make_chain(P, B, 2)
    db = _tamper(_db(tmp_path, ev), "DELETE FROM agreements")
    [result] = _audit(db)
    r = result.report
    assert rules(r) == ["no_agreement"] and r.state == "no_agreement" and r.amount_micros == 0
    assert r.agreement_id == ev.agreement.record_id and r.receipts == 2


def test_owed_is_zero_for_an_agreement_that_is_not_fully_signed():
    ev = make_chain(P, B, 3)
    provider_only = Signed(ev.agreement.body, ev.agreement.record, ev.agreement.sigs[:1])
    forged = Signed(ev.agreement.body, ev.agreement.record, (bytes(64), ev.agreement.sigs[1]))
    for agreement, rule in ((provider_only, "agreement_not_countersigned"), (forged, "agreement_signature")):
        pending = [*ev.receipts[:2], Signed(ev.receipts[2].body, ev.receipts[2].record, ev.receipts[2].sigs[:1])]
        report = verify_chain(agreement, pending)
        assert rules(report) == [rule]
        assert (report.amount_micros, report.billed_ms, report.unsigned_owed_micros) == (0, 0, 0), rule


def test_one_defect_gives_one_finding():
    ev = make_chain(P, B, 4)
    rs = list(ev.receipts)
    bad_sig = Signed(rs[1].body, rs[1].record, (bytes(64), rs[1].sigs[1]))
    assert rules(verify_chain(ev.agreement, [rs[0], bad_sig, *rs[2:]])) == ["receipt_signature"]
    assert rules(verify_chain(ev.agreement, [rs[0], rs[2], rs[1], rs[3]])) == ["out_of_order"]
    report = verify_chain(ev.agreement, [rs[0], rs[2], rs[1], rs[3]])
    assert report.amount_micros == rs[3].record.amount_micros and report.state == "final:completed"
    # A forged body in a receipt's place: its signature fails, and the link past it is not held against
    # the next receipt (one finding, not two).
    forged_body = replace(rs[1].record, amount_micros=1)
    forged = Signed(forged_body.encode(), forged_body, rs[1].sigs)
    assert rules(verify_chain(ev.agreement, [rs[0], forged, *rs[2:]])) == ["receipt_signature"]
    # A receipt missing altogether is a gap.
    assert rules(verify_chain(ev.agreement, [rs[0], *rs[2:]])) == ["seq_gap"]


def test_a_receipt_naming_the_agreement_but_signed_by_other_parties_is_excluded():
    ev = make_chain(P, B, 3, final=False)
    r4 = next_receipt(ev.agreement, ev.receipts[-1].record, ev.receipts[-1].record_id)
    intruder = countersign(sign_record(replace(r4, provider=P2.public, buyer=B2.public), P2), B2)
    report = verify_chain(ev.agreement, [*ev.receipts, intruder])
    assert rules(report) == ["wrong_parties"] and report.last_seq == 3
    assert report.state == "running" and FINAL not in report.state


def test_origin_every_field_the_agreement_copies_from_its_proposal_and_offer_is_checked(tmp_path):
    from settlement.store import StoredChain

    ev = make_chain(P, B, 1)
    ag = ev.agreement.record
    assert rules(_audit(_bundle(tmp_path, [ev.stored()]))[0].report) == []
    for name, changed in (("job", replace(ag, job=replace(ag.job, command=("true",)))),
                          ("resources", replace(ag, resources=replace(ag.resources, cpu_millis=2000))),
                          ("max_duration_ms", replace(ag, max_duration_ms=ag.max_duration_ms - 1)),
                          ("terms", replace(ag, terms=replace(ag.terms, grace_ms=ag.terms.grace_ms + 1)))):
        agreement = countersign(sign_record(changed, P), B)
        stored = StoredChain(agreement.to_wire(), ev.offer.to_wire(), ev.proposal.to_wire(), [])
        [result] = _audit(_bundle(tmp_path, [stored], f"{name}.bundle"))
        assert rules(result.report) == ["origin_mismatch"] * (2 if name == "terms" else 1), name
        assert all(name in f.detail or "offer" in f.detail for f in result.report.findings), name


def _job_of(ev, *inputs):
    from settlement.audit import ChainJob

    return ChainJob(ev.agreement.record_id, agreements=[ev.agreement.to_wire()] * len(inputs),
                    receipts=[[r.to_wire() for r in rs] for rs in inputs],
                    sources=[f"input{i}" for i in range(len(inputs))])


def test_merged_inputs_judge_order_within_each_input_and_give_one_finding_per_defect():
    from settlement.audit import audit_chain

    ev = make_chain(P, B, 4)
    rs = ev.receipts
    provider_only = [Signed(r.body, r.record, r.sigs[:1]) for r in rs]
    # The buyer's copy countersigned, the provider's not yet: merged, the best copy of each; no finding.
    report = audit_chain(_job_of(ev, rs[:3], provider_only)).report
    assert report.ok and (report.last_seq, report.unsigned_seq) == (3, 4), report.findings
    # The other way round: the first input's copies lack the countersignatures the second one has.
    report = audit_chain(_job_of(ev, provider_only, rs)).report
    assert report.ok and report.last_seq == 4 and report.unsigned_receipt_id is None, report.findings
    # Out of order within the second input only: one finding.
    report = audit_chain(_job_of(ev, rs, [rs[3], rs[1]])).report
    assert rules(report) == ["out_of_order"], report.findings
    # Another body for seq 2 in the second input: equivocation, and nothing else.
    other = resign(replace(rs[1].record, issued_at_ms=rs[1].record.issued_at_ms - 1), P, B)
    report = audit_chain(_job_of(ev, rs, [rs[0], other])).report
    assert rules(report) == ["equivocation"] and report.amount_micros == rs[3].record.amount_micros
