"""`suanli audit STATEMENT PATHS...` verifies a settle statement against its evidence (issue 16), and
`suanli export` keeps an existing file unless `--force` (issue 17, item 11). Real CLI, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from p2p.envelope import open_signed, sign_record
from p2p.receipt_records import Statement
from settlement.bundle import encode_bundle
from settlement.testing import key_from_label, make_chain, resign, write_store

SUANLI = shutil.which("suanli", path=str(Path(sys.executable).parent)) or "suanli"
P, B, A = key_from_label("provider"), key_from_label("buyer"), key_from_label("auditor")


def run(*args):
    proc = subprocess.run([SUANLI, *map(str, args)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SUANLI_HOME": os.environ.get("SUANLI_HOME", "/nonexistent")})
    return proc.returncode, proc.stdout, proc.stderr


def _key(tmp_path):
    key = tmp_path / "auditor.key"
    assert run("keys", "new", "--out", key)[0] == 0
    return key


def _bundle(tmp_path, name, chains):
    path = tmp_path / name
    path.write_bytes(encode_bundle([c.stored() for c in chains]))
    return path


def test_a_statement_verifies_against_the_evidence_it_came_from(tmp_path):
    honest = make_chain(P, B, 3)
    pending = make_chain(P, B, 4, final=False, nonce=b"\x09" * 16)
    pending = replace(pending, receipts=[*pending.receipts[:3], resign(pending.receipts[3].record, P, None)])
    bundle = _bundle(tmp_path, "ev.bundle", [honest, pending])
    statement = tmp_path / "s.bin"
    code, out, err = run("settle", bundle, "--key", _key(tmp_path), "--out", statement)
    assert code == 0, err
    code, out, err = run("audit", statement, bundle)
    assert code == 0 and "each equals the audit of the evidence" in out, (out, err)
    code, out, _ = run("audit", "--json", statement, bundle)
    doc = json.loads(out)
    assert code == 0 and doc["statements"][0]["ok"] and doc["statements"][0]["entries"] == 3


def test_a_statement_that_differs_from_the_evidence_is_named(tmp_path):
    ev = make_chain(P, B, 3)
    bundle = _bundle(tmp_path, "ev.bundle", [ev])
    statement = tmp_path / "s.bin"
    assert run("settle", bundle, "--key", _key(tmp_path), "--out", statement)[0] == 0
    signed = open_signed(statement.read_bytes(), Statement)
    entry = signed.record.entries[0]
    for name, entries in (("inflated", (replace(entry, amount_micros=entry.amount_micros + 1),)),
                          ("another state", (replace(entry, state="running"),)), ("missing", ()),
                          ("an extra entry", (entry, replace(entry, agreement_id=b"\1" * 32)))):
        lie = tmp_path / f"{name}.bin"
        lie.write_bytes(sign_record(replace(signed.record, auditor=A.public, entries=entries), A).to_bytes())
        code, out, err = run("audit", lie, bundle)
        assert code == 1 and "PROBLEM" in out and err == "", (name, out, err)
    # A bad signature is a problem of the statement, not an unusable file.
    data = bytearray(statement.read_bytes())
    data[-1] ^= 1
    forged = tmp_path / "forged.bin"
    forged.write_bytes(bytes(data))
    code, out, err = run("audit", forged, bundle)
    assert code == 1 and "signature does not verify" in out, (out, err)


def test_a_statement_hides_no_finding_of_its_chain(tmp_path):
    ev = make_chain(P, B, 3)
    other = make_chain(key_from_label("p2"), key_from_label("b2"), 3, nonce=b"\x08" * 16)
    spliced = replace(ev, receipts=[*ev.receipts, other.receipts[1]])
    bundle = _bundle(tmp_path, "ev.bundle", [spliced])
    statement = tmp_path / "s.bin"
    code, out, err = run("settle", bundle, "--key", _key(tmp_path), "--out", statement, "--json")
    assert code == 1 and json.loads(out)["disputed"] == 1, (out, err)
    [entry] = open_signed(statement.read_bytes(), Statement).record.entries
    assert entry.findings == 1 and entry.last_receipt_id == ev.receipts[-1].record_id
    assert run("audit", statement, bundle)[0] == 0
    honest = tmp_path / "honest.bin"
    honest.write_bytes(sign_record(replace(open_signed(statement.read_bytes(), Statement).record, auditor=A.public,
                                           entries=(replace(entry, findings=0),)), A).to_bytes())
    assert run("audit", honest, bundle)[0] == 1


def test_a_statement_alone_or_broken_is_one_line_exit_2(tmp_path):
    ev = make_chain(P, B, 2)
    bundle = _bundle(tmp_path, "ev.bundle", [ev])
    statement = tmp_path / "s.bin"
    assert run("settle", bundle, "--key", _key(tmp_path), "--out", statement)[0] == 0
    code, out, err = run("audit", statement)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "give them too" in err, err
    truncated = tmp_path / "t.bin"
    truncated.write_bytes(statement.read_bytes()[:-5])
    code, out, err = run("audit", truncated, bundle)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_export_keeps_an_existing_file_unless_forced(tmp_path):
    db = write_store(tmp_path / "node.db", make_chain(P, B, 2))
    out = tmp_path / "x.bundle"
    out.write_bytes(b"precious")
    code, stdout, err = run("export", "--db", db, "--out", out)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == b"precious"
    code, stdout, err = run("export", "--db", db, "--out", out, "--force")
    assert code == 0, err
    assert run("audit", out)[0] == 0


def test_settle_keeps_an_existing_statement_unless_forced(tmp_path):
    bundle = _bundle(tmp_path, "ev.bundle", [make_chain(P, B, 2)])
    statement = tmp_path / "s.bin"
    statement.write_bytes(b"last month's statement")
    key = _key(tmp_path)
    code, out, err = run("settle", bundle, "--key", key, "--out", statement)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1, err
    assert statement.read_bytes() == b"last month's statement"
    assert run("settle", bundle, "--key", key, "--out", statement, "--force")[0] == 0
    assert run("audit", statement, bundle)[0] == 0
