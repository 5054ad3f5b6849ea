"""`suanli keys|export|audit|settle` through the real console script (and, for the byte-by-byte
tamper property, through the same entry point in-process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from node.cli import main
from p2p.envelope import Signed, countersign, open_signed, sign_record
from p2p.market_records import Agreement
from p2p.receipt_records import Statement
from settlement.bundle import encode_bundle
from settlement.store import Store
from settlement.testing import key_from_label, make_chain, write_store

SUANLI = shutil.which("suanli", path=str(Path(sys.executable).parent)) or "suanli"
P, B = key_from_label("provider"), key_from_label("buyer")


def run(*args, env=None):
    proc = subprocess.run([SUANLI, *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, out, err, expected_code=2):
    assert code == expected_code, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("suanli: error: ")


@pytest.fixture
def node_db(tmp_path, evidence):
    return write_store(tmp_path / "provider.db", evidence)


def write_bundle(path, ev, receipts=None):
    stored = ev.stored()
    if receipts is not None:
        stored = replace(stored, receipts=[r.to_wire() for r in receipts])
    path.write_bytes(encode_bundle([stored]))
    return path


def test_help_lists_the_commands():
    code, out, _ = run("--help")
    assert code == 0 and "audit" in out and "keys" in out and "export" in out


def test_keys_new_and_show(tmp_path):
    key = tmp_path / "k" / "node.key"
    code, out, _ = run("keys", "new", "--out", key, "--json")
    assert code == 0
    created = json.loads(out)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    code, out, _ = run("keys", "show", key, "--json")
    assert code == 0 and json.loads(out)["peer_id"] == created["peer_id"]
    code, out, err = run("keys", "new", "--out", key)
    assert_one_line_error(code, out, err)
    key.chmod(0o644)
    code, out, err = run("keys", "show", key)
    assert_one_line_error(code, out, err)
    assert f"chmod 600 {key}" in err


def test_keys_default_to_the_data_dir(tmp_path):
    code, out, _ = run("keys", "new", env={"SUANLI_HOME": str(tmp_path)})
    assert code == 0 and (tmp_path / "node.key").exists()


def test_export_then_audit_bundle_and_database(tmp_path, node_db, evidence):
    bundle = tmp_path / "out.bundle"
    prefix = evidence.agreement.record_id.hex()[:12]
    code, out, err = run("export", "--db", node_db, "--agreement", prefix, "--out", bundle)
    assert code == 0, err
    for inputs in ([bundle], [node_db], [node_db, bundle]):
        code, out, err = run("audit", "--json", *inputs)
        assert code == 0, out + err
        doc = json.loads(out)
        (ag,) = doc["agreements"]
        assert doc["ok"] and ag["state"] == "final:completed" and ag["receipts"] == 4
        assert ag["amount_micros"] == evidence.receipts[-1].record.amount_micros and ag["billed_ms"] == 4000
        assert ag["provider"] == P.peer_id and ag["buyer"] == B.peer_id
    code, out, _ = run("audit", bundle)
    assert code == 0 and "final:completed" in out and out.rstrip().endswith("ok")


def test_export_unknown_agreement_is_one_line(tmp_path, node_db):
    code, out, err = run("export", "--db", node_db, "--agreement", "ffff", "--out", tmp_path / "x")
    assert_one_line_error(code, out, err)


@pytest.mark.parametrize("content", [b"", b"garbage \x00\xff" * 10, os.urandom(200), b"\x83\xa1t"])
def test_garbage_input_is_unusable(tmp_path, content):
    path = tmp_path / "in.bundle"
    path.write_bytes(content)
    assert_one_line_error(*run("audit", path))


def test_truncated_missing_and_directory_inputs_are_unusable(tmp_path, evidence):
    data = encode_bundle([evidence.stored()])
    truncated = tmp_path / "t.bundle"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(*run("audit", truncated))
    assert_one_line_error(*run("audit", tmp_path / "missing.bundle"))
    assert_one_line_error(*run("audit", tmp_path))


def _chain(n=4):
    ev = make_chain(P, B, n)
    return ev, list(ev.receipts)


def _resigned(ev, index, **changes):
    rs = list(ev.receipts)
    rs[index] = countersign(sign_record(replace(rs[index].record, **changes), P), B)
    return rs


TAMPERS = {
    "forged signature": (lambda ev, rs: rs[:1] + [Signed(rs[1].body, rs[1].record, (bytes(64), rs[1].sigs[1]))]
                         + rs[2:], "receipt_signature"),
    "wrong domain": (lambda ev, rs: rs[:1] + [Signed(rs[1].body, rs[1].record, (
        P.sign(b"suanli/offer/1/provider" + rs[1].body), rs[1].sigs[1]))] + rs[2:], "receipt_signature"),
    "swapped signer": (lambda ev, rs: rs[:1] + [Signed(rs[1].body, rs[1].record, rs[1].sigs[::-1])] + rs[2:],
                       "receipt_signature"),
    "reordered": (lambda ev, rs: [rs[0], rs[2], rs[1], rs[3]], "out_of_order"),
    "missing": (lambda ev, rs: rs[:1] + rs[2:], "seq_gap"),
    "duplicated": (lambda ev, rs: rs[:2] + rs[1:], "duplicate"),
    "decreasing amount": (lambda ev, rs: _resigned(ev, 3, amount_micros=0, metered_ms=0), "decreasing"),
    "wrong arithmetic": (lambda ev, rs: _resigned(ev, 2, amount_micros=rs[2].record.amount_micros + 7),
                         "wrong_amount"),
    "equivocation": (lambda ev, rs: rs[:2] + [_resigned(ev, 1, issued_at_ms=rs[1].record.issued_at_ms + 1)[1]]
                     + rs[2:], "equivocation"),
}


@pytest.mark.parametrize("name", TAMPERS)
def test_tampered_bundles_are_reported(tmp_path, name):
    ev, rs = _chain()
    build, rule = TAMPERS[name]
    path = write_bundle(tmp_path / "t.bundle", ev, build(ev, rs))
    code, out, err = run("audit", "--json", path)
    assert code == 1, out + err
    rules = {f["rule"] for a in json.loads(out)["agreements"] for f in a["findings"]}
    assert rule in rules


def test_equivocation_across_the_two_parties_databases(tmp_path):
    ev, rs = _chain()
    other = _resigned(ev, 3, issued_at_ms=rs[3].record.issued_at_ms + 5)
    a = write_bundle(tmp_path / "provider.bundle", ev, rs)
    b = write_bundle(tmp_path / "buyer.bundle", ev, other)
    code, out, _ = run("audit", "--json", a, b)
    assert code == 1 and "equivocation" in out


def test_every_single_byte_flip_is_caught(tmp_path, capsys):
    """Property over every byte position of a small bundle: never exit 0 on a changed file."""
    ev = make_chain(P, B, 1)
    data = encode_bundle([ev.stored()])
    path = tmp_path / "flip.bundle"
    assert main(["audit", str(write_bundle(path, ev))]) == 0
    outcomes = {1: 0, 2: 0}
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01 if i % 2 else 0x80
        path.write_bytes(bad)
        code = main(["audit", str(path)])
        assert code in (1, 2), f"flipping byte {i} passed the audit"
        outcomes[code] += 1
    capsys.readouterr()
    assert outcomes[1] > 0 and outcomes[2] > 0


def test_jobs_do_not_change_the_result(tmp_path):
    chains = [make_chain(P, B, 3, nonce=bytes([i]) * 16).stored() for i in range(6)]
    path = tmp_path / "many.bundle"
    path.write_bytes(encode_bundle(chains))
    one = json.loads(run("audit", "--json", path)[1])
    two = json.loads(run("audit", "--json", "--jobs", "2", path)[1])
    assert one == two and len(one["agreements"]) == 6 and one["ok"]


def test_settle_writes_a_signed_statement(tmp_path, node_db):
    key = tmp_path / "auditor.key"
    assert run("keys", "new", "--out", key)[0] == 0
    out_file = tmp_path / "statement.bin"
    code, out, err = run("settle", node_db, "--key", key, "--out", out_file, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["balances"] == [{"payer": B.peer_id, "payee": P.peer_id, "amount_micros": 440}]
    statement = open_signed(out_file.read_bytes(), Statement)
    assert statement.record.entries[0].amount_micros == 440


OFFLINE = """
import sys
from node.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
assert "libp2p" not in sys.modules, "an offline command imported libp2p"
assert "trio" not in sys.modules, "an offline command imported trio"
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["keys", "show", "{key}"], ["audit", "{db}"],
                                  ["export", "--db", "{db}", "--out", "{tmp}/x.bundle"]])
def test_offline_commands_do_not_import_libp2p(tmp_path, node_db, args):
    key = tmp_path / "k.key"
    run("keys", "new", "--out", key)
    argv = [a.format(key=key, db=node_db, tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-c", OFFLINE, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_agreement_is_signed_by_both(evidence):
    assert open_signed(evidence.agreement.to_bytes(), Agreement, min_sigs=2).is_complete


def test_a_tampered_copy_is_reported_whatever_the_order_of_inputs(tmp_path):
    ev, rs = _chain()
    forged = rs[:1] + [Signed(rs[1].body, rs[1].record, (rs[1].sigs[0], bytes(64)))] + rs[2:]
    good = write_bundle(tmp_path / "good.bundle", ev, rs)
    bad = write_bundle(tmp_path / "bad.bundle", ev, forged)
    results = []
    for order in ((good, bad), (bad, good)):
        code, out, _ = run("audit", "--json", *order)
        doc = json.loads(out)
        (ag,) = doc["agreements"]
        results.append((code, sorted({f["rule"] for f in ag["findings"]}), ag["amount_micros"]))
    assert results[0] == results[1] == (1, ["receipt_signature"], rs[-1].record.amount_micros)


def test_an_invented_debt_at_cap_2_63_is_owed_at_most_the_unsigned_window(tmp_path):
    """H3 through real signed records in a real database: a provider states cap 2^63, runs nothing,
    and signs a final claim for the whole duration (as a provider fault: a buyer_unresponsive final with
    nothing left unsigned before it would also be unfounded, settlement.chain Rule U). The audit owes no
    co-signed debt, shows the claim apart, owed at most billing Rule 3's bound; the statement never merges
    the two."""
    from p2p.receipt_records import FINAL, PROVIDER_FAULT, ZERO_USAGE, Receipt
    from settlement.billing import amount_due, unsigned_window_ms
    from settlement.testing import TERMS, make_agreement

    terms = replace(TERMS, exposure_cap_micros=(1 << 63))
    offer, proposal, agreement = make_agreement(P, B, terms=terms)
    ag = agreement.record
    claim = sign_record(Receipt(
        agreement_id=agreement.record_id, provider=P.public, buyer=B.public, seq=1, prev=agreement.record_id,
        issued_at_ms=ag.created_at_ms + ag.max_duration_ms + 1000, metered_ms=ag.max_duration_ms, usage=ZERO_USAGE,
        amount_micros=amount_due(ag.max_duration_ms, ag.price_micros_per_s), state=FINAL,
        reason=PROVIDER_FAULT, exit_code=None, output_digest=None), P)
    db = tmp_path / "provider.db"
    with Store(db) as store:
        store.put_offer(offer)
        store.put_proposal(proposal)
        store.put_agreement(agreement)
        store.append_receipt(claim)
    bound = amount_due(unsigned_window_ms(TERMS.interval_ms, TERMS.countersign_timeout_ms, TERMS.grace_ms),
                       ag.price_micros_per_s)
    code, out, err = run("audit", "--json", db)
    assert code == 0, (out, err)
    (doc,) = json.loads(out)["agreements"]
    assert doc["amount_micros"] == 0 and doc["billed_ms"] == 0
    assert doc["unsigned_claim"]["claimed_micros"] == claim.record.amount_micros == 66_000
    assert doc["unsigned_claim"]["owed_micros"] == bound == 1100
    code, out, err = run("audit", db)
    assert code == 0 and "unsigned claim" in out, (out, err)
    key = tmp_path / "auditor.key"
    run("keys", "new", "--out", key)
    code, out, err = run("settle", db, "--key", key, "--out", tmp_path / "s.bin", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["balances"] == [] and doc["agreements"] == 1
    assert doc["unsigned_claims"] == [{"payer": B.peer_id, "payee": P.peer_id, "owed_micros": bound}]
    statement = open_signed((tmp_path / "s.bin").read_bytes(), Statement).record
    assert [(e.state, e.amount_micros) for e in statement.entries] == [
        ("final:provider_fault", 0), ("unsigned:final:provider_fault", bound)]
