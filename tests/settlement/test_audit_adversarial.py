"""Adversarial property suite (issue 16): generated chains, mutated by rules an attacker or a broken
store could follow, audited; the exact findings and what is owed must be what docs/PROTOCOL.md §5 says.

Each receipt in an input is modelled by what the spec reads of it (its kind, seq, which body it is,
whether the buyer's countersignature holds, its figures), and ``expected`` applies the spec's steps to
the model alone; it never calls the audit's code. Real signatures, real bundles, real databases.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass, replace

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.envelope import Signed, countersign, sign_record
from p2p.receipt_records import BUYER_UNRESPONSIVE, COMPLETED, FINAL, RUNNING
from settlement.audit import ChainJob, audit, audit_chain, read_inputs
from settlement.billing import amount_due
from settlement.statement import build_statement
from settlement.testing import TERMS, key_from_label, make_agreement, make_chain, next_receipt, write_store
from settlement.verify_statement import statement_problems

P, B = key_from_label("provider"), key_from_label("buyer")
P2, B2, X = key_from_label("provider-2"), key_from_label("buyer-2"), key_from_label("intruder")
OFFER, PROPOSAL, AGREEMENT = make_agreement(P, B)
PRICE = AGREEMENT.record.price_micros_per_s
W = 2 * TERMS.interval_ms + TERMS.countersign_timeout_ms + TERMS.grace_ms
OTHER = make_chain(P2, B2, 3, nonce=b"\x08" * 16)


@dataclass(frozen=True)
class M:
    """What the spec reads of one listed receipt."""

    kind: str  # good, malformed, foreign, wrong_parties, bad_sig
    seq: int = 0
    variant: int = 0  # which body for this seq: 0 the honest one, 1 an equivocation, 2 a wrong amount
    cosig: str = "none"  # valid, invalid, none
    final: bool = False
    reason: str | None = None
    metered: int = 0
    amount: int = 0
    issued: int = 0


def _signed(r, cosign: str, provider=P, buyer=B):
    s = sign_record(r, provider)
    if cosign == "valid":
        s = countersign(s, buyer)
    elif cosign == "invalid":  # a countersignature by the wrong key
        s = Signed(s.body, s.record, (s.sigs[0], X.sign(s.signed_message(1))))
    return s


def honest(n: int, final: bool, reason: str, cosigned: int) -> list[tuple[Signed, M]]:
    out, prev, prev_id = [], None, AGREEMENT.record_id
    for i in range(n):
        is_final = final and i == n - 1
        r = next_receipt(AGREEMENT, prev, prev_id, final=is_final, reason=reason)
        cos = "valid" if i < cosigned else "none"
        s = _signed(r, cos)
        out.append((s, M("good", r.seq, 0, cos, is_final, r.reason, r.metered_ms, r.amount_micros, r.issued_at_ms)))
        prev, prev_id = r, s.record_id
    return out


def _variant(item: tuple[Signed, M], variant: int) -> tuple[Signed, M]:
    s, m = item
    r = s.record
    if variant == 1:  # another body for the same seq, as validly signed
        r = replace(r, issued_at_ms=r.issued_at_ms - 1)
        m = replace(m, variant=1, issued=m.issued - 1)
    else:  # a wrong amount, re-signed by the right keys
        r = replace(r, amount_micros=r.amount_micros + 1)
        m = replace(m, variant=2, amount=m.amount + 1)
    return _signed(r, m.cosig if m.cosig != "invalid" else "valid"), replace(
        m, cosig=m.cosig if m.cosig != "invalid" else "valid")


def _noncanonical(s: Signed) -> dict:
    obj = msgpack.unpackb(s.body, raw=False)
    body = msgpack.packb({"seq": obj.pop("seq"), **obj}, use_bin_type=True)  # keys out of order
    return {"body": body, "sigs": list(s.sigs)}


def mutate(items, draw):
    """One mutation, drawn; returns the new list of (envelope, model)."""
    items = list(items)
    n = len(items)
    kinds = ["splice_foreign", "splice_as_ours", "after_final"]
    if n:
        kinds += ["drop", "swap", "duplicate", "forge_provider", "forge_buyer", "strip_buyer", "equivocate",
                  "wrong_amount", "noncanonical"]
    kind = draw(st.sampled_from(kinds))
    pos = draw(st.integers(0, n))
    i = draw(st.integers(0, max(0, n - 1)))
    good = [k for k, (_, m) in enumerate(items) if m.kind == "good" and m.variant == 0]
    if kind == "drop":
        del items[i]
    elif kind == "swap":
        j = draw(st.integers(0, n - 1))
        items[i], items[j] = items[j], items[i]
    elif kind == "duplicate":
        items.insert(pos, items[i])
    elif kind == "splice_foreign":
        s = OTHER.receipts[draw(st.integers(0, 2))]
        items.insert(pos, (s.to_wire(), M("foreign", s.record.seq)))
    elif kind == "splice_as_ours":  # another pair's receipt, naming this agreement, signed by that pair
        r = replace(OTHER.receipts[draw(st.integers(0, 2))].record, agreement_id=AGREEMENT.record_id)
        items.insert(pos, (_signed(r, "valid", P2, B2), M("wrong_parties", r.seq)))
    elif kind == "after_final":
        finals = [m for _, m in items if m.kind == "good" and m.final and m.variant == 0]
        if finals:
            f = next(s for s, m in items if m is finals[0])
            r = next_receipt(AGREEMENT, replace(f.record, state=RUNNING, reason=None, exit_code=None,
                                                output_digest=None), f.record_id)
            items.insert(pos, (_signed(r, "valid"), M("good", r.seq, 0, "valid", False, None, r.metered_ms,
                                                      r.amount_micros, r.issued_at_ms)))
    elif kind == "forge_provider" and isinstance(items[i][0], Signed):
        s, m = items[i]
        if m.kind in ("good", "wrong_parties"):
            forged = Signed(s.body, s.record, (X.sign(s.signed_message(0)), *s.sigs[1:]))
            items[i] = (forged, replace(m, kind="bad_sig" if m.kind == "good" else m.kind))
    elif kind == "forge_buyer" and isinstance(items[i][0], Signed):
        s, m = items[i]
        if m.kind == "good" and m.cosig == "valid":
            items[i] = (Signed(s.body, s.record, (s.sigs[0], bytes(64))), replace(m, cosig="invalid"))
    elif kind == "strip_buyer" and isinstance(items[i][0], Signed):  # a copy stored before countersigning
        s, m = items[i]
        if m.kind == "good" and m.cosig != "none":
            items[i] = (Signed(s.body, s.record, s.sigs[:1]), replace(m, cosig="none"))
    elif kind == "equivocate" and good:
        items.insert(pos, _variant(items[draw(st.sampled_from(good))], 1))
    elif kind == "wrong_amount" and good:
        k = draw(st.sampled_from(good))
        items[k] = _variant(items[k], 2)
    elif kind == "noncanonical" and isinstance(items[i][0], Signed):
        items[i] = (_noncanonical(items[i][0]), M("malformed"))
    return items


def merged(first: list[M], second: list[M]):
    """§5 "Several inputs" on the model: the second input's copies of bodies the first lists are merged
    into the first's copy (a copy whose signature fails is reported; the best copy is kept) and count
    only for the order of their input. Returns [(model, input, merged copy)] and the findings so far."""
    found: Counter = Counter()
    first = list(first)
    body_at = {}
    for k, m in enumerate(first):  # the copies sharing the honest body of their seq
        if m.kind in ("good", "bad_sig") and m.variant == 0:
            body_at.setdefault(m.seq, k)
    out = [(m, 0, False) for m in first]
    for c in second:
        k = body_at.get(c.seq)
        if k is None:
            out.append((c, 1, False))
            body_at[c.seq] = len(first) + 99  # a later copy in the same input would be a duplicate
            continue
        if k < len(first):
            kept = first[k]
            kept_ok = kept.kind == "good" and kept.cosig != "invalid"
            if not kept_ok:
                found[("receipt_signature", c.seq)] += 1
                first[k] = c
                out[k] = (c, 0, False)
            elif c.cosig == "valid" and kept.cosig == "none":
                first[k] = c
                out[k] = (c, 0, False)
        out.append((c, 1, True))
    return out, found


def expected(models: list[M], second: list[M] | None = None):
    """docs/PROTOCOL.md §5 applied to the model: (findings as a Counter of (rule, seq), owed figures)."""
    entries, found = merged(models, second) if second is not None else ([(m, 0, False) for m in models], Counter())
    failed, seen, admitted, tops = set(), {}, [], {}
    for m, source, copy in entries:  # Step 2, admission
        if m.kind == "malformed":
            found[("malformed", None)] += 1
            continue
        if copy:
            if m.seq < tops.get(source, 0):
                found[("out_of_order", m.seq)] += 1
            tops[source] = max(tops.get(source, 0), m.seq)
            continue
        if m.kind == "foreign":
            found[("wrong_agreement", m.seq)] += 1
            continue
        if m.kind in ("wrong_parties", "bad_sig"):
            found[("wrong_parties" if m.kind == "wrong_parties" else "receipt_signature", m.seq)] += 1
            failed.add(m.seq)
            continue
        if m.cosig == "invalid":
            found[("receipt_signature", m.seq)] += 1
        if m.seq in seen:
            found[("duplicate" if seen[m.seq] == m.variant else "equivocation", m.seq)] += 1
            continue
        seen[m.seq] = m.variant
        if m.seq < tops.get(source, 0):  # Step 3
            found[("out_of_order", m.seq)] += 1
        tops[source] = max(tops.get(source, 0), m.seq)
        admitted.append(m)
    admitted.sort(key=lambda m: m.seq)
    chain, next_seq, last, link_known, final = [], 1, None, True, False
    for m in admitted:
        if final:
            found[("after_final", m.seq)] += 1
            continue
        if m.seq > next_seq and all(s in failed for s in range(next_seq, m.seq)):
            next_seq, link_known = m.seq, False  # slots that count as present
        if m.seq != next_seq:
            found[("seq_gap", m.seq)] += 1
        elif link_known and last is not None and last.variant != 0:
            found[("broken_link", m.seq)] += 1  # every honest body links to the honest one before it
        if m.variant == 2:
            found[("wrong_amount", m.seq)] += 1
        chain.append(m)
        next_seq, last, link_known, final = m.seq + 1, m, True, m.final
    cosigned = [k for k, m in enumerate(chain) if m.cosig == "valid"]
    a_m = chain[cosigned[-1]] if cosigned else None
    tail = chain[cosigned[-1] + 1:] if cosigned else chain
    a, m_ms = (a_m.amount, a_m.metered) if a_m else (0, 0)
    owed_unsigned = 0
    if tail:  # Step 5 and the unsigned claim
        end = tail[-1]
        if end.final and end.reason == BUYER_UNRESPONSIVE and (
                len(tail) == 1 or end.issued - tail[0].issued < TERMS.grace_ms):
            found[("unfounded_unresponsive", end.seq)] += 1
        if end.amount > a:
            owed_unsigned = min(end.amount, amount_due(m_ms + W, PRICE), a + TERMS.exposure_cap_micros) - a
    state = "empty" if not chain else (f"final:{chain[-1].reason}" if chain[-1].final else RUNNING)
    return found, (a, a_m.seq if a_m else 0, owed_unsigned, state)


def _wire(env):
    return env.to_wire() if isinstance(env, Signed) else env


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_chains_give_exactly_the_spec_findings_and_owed(data):
    n = data.draw(st.integers(0, 6))
    final = data.draw(st.booleans())
    reason = data.draw(st.sampled_from([COMPLETED, BUYER_UNRESPONSIVE]))
    items = base = honest(n, final, reason, data.draw(st.integers(0, n)))
    for _ in range(data.draw(st.integers(0, 3))):
        items = mutate(items, data.draw)
    inputs = [[_wire(e) for e, _ in items]]
    second = None
    if data.draw(st.booleans()):  # the other party's copy too: an ordered subset, some not countersigned
        picked = [(s, m) for s, m in base if data.draw(st.booleans())]
        strip = [data.draw(st.booleans()) for _ in picked]
        picked = [((Signed(s.body, s.record, s.sigs[:1]), replace(m, cosig="none")) if cut else (s, m))
                  for (s, m), cut in zip(picked, strip, strict=True)]
        if len(picked) > 1 and data.draw(st.booleans()):  # listed out of order in that input
            i, j = data.draw(st.integers(0, len(picked) - 1)), data.draw(st.integers(0, len(picked) - 1))
            picked[i], picked[j] = picked[j], picked[i]
        inputs.append([s.to_wire() for s, _ in picked])
        second = [m for _, m in picked]
    job = ChainJob(AGREEMENT.record_id, agreements=[AGREEMENT.to_wire()] * len(inputs), offer=OFFER.to_wire(),
                   proposal=PROPOSAL.to_wire(), receipts=inputs, sources=["generated", "other"][:len(inputs)])
    report = audit_chain(job).report
    want, (owed, last_seq, owed_unsigned, state) = expected([m for _, m in items], second)
    got = Counter((f.rule, f.seq if f.rule != "malformed" else None) for f in report.findings)
    assert got == want, ([m for _, m in items], report.findings)
    assert (report.amount_micros, report.last_seq, report.unsigned_owed_micros, report.state) == (
        owed, last_seq, owed_unsigned, state), [m for _, m in items]
    # settle: every entry of a chain with findings is marked; the statement verifies against its evidence.
    statement = build_statement([report], key_from_label("auditor").public, 1)
    assert all(e.findings == sum(want.values()) for e in statement.entries)
    assert statement.entries[0].amount_micros == owed
    assert [e.amount_micros for e in statement.entries[1:]] == ([owed_unsigned] if report.unsigned_receipt_id else [])
    signed = sign_record(statement, key_from_label("auditor"))
    assert statement_problems(signed, [report]) == []


COLUMNS = [("receipts", "agreement_id", b"\5" * 32), ("receipts", "seq", 1000), ("receipts", "id", b"\6" * 32),
           ("agreements", "id", b"\7" * 32), ("agreements", "provider", b"\1" * 32),
           ("agreements", "buyer", b"\2" * 32), ("agreements", "offer_id", b"\3" * 32),
           ("agreements", "proposal_id", b"\4" * 32), ("agreements", "created_at_ms", 7)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(COLUMNS), st.integers(1, 4), st.integers(0, 4))
def test_an_edited_database_column_is_one_finding_and_changes_nothing_owed(tmp_path_factory, column, n, row):
    table, name, value = column
    tmp = tmp_path_factory.mktemp("db")
    ev = make_chain(P, B, n, nonce=hashlib.sha256(f"{n}".encode()).digest()[:16])
    db = write_store(tmp / "node.db", ev)
    [honest_result] = audit(read_inputs([db]))
    edited = tmp / "edited.db"
    shutil.copy(db, edited)
    conn = sqlite3.connect(edited)
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{trigger}"')
    where = f" WHERE seq = {row % n + 1}" if table == "receipts" else ""
    conn.execute(f"UPDATE {table} SET {name} = ?{where}", (value,))
    conn.commit()
    conn.close()
    [result] = audit(read_inputs([edited]))
    r, h = result.report, honest_result.report
    assert [f.rule for f in r.findings] == ["column_mismatch"], (column, r.findings)
    assert (r.agreement_id, r.state, r.amount_micros, r.last_seq, r.last_receipt_id) == (
        h.agreement_id, h.state, h.amount_micros, h.last_seq, h.last_receipt_id)
    assert FINAL in r.state
