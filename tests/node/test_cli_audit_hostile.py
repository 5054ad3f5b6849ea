"""`suanli audit` against hostile files (issue 13, L2): a database whose schema would loop, a device,
a FIFO, a directory, a file over the size limit. Each ends at once with exit 2 and one line."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.cli import main
from settlement.testing import key_from_label, make_chain, write_store

SUANLI = shutil.which("suanli", path=str(Path(sys.executable).parent)) or "suanli"
P, B = key_from_label("provider"), key_from_label("buyer")


def audit(*paths, timeout=30):
    start = time.monotonic()
    proc = subprocess.run([SUANLI, "audit", *map(str, paths)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def assert_one_line(code, out, err, *_):
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.startswith("suanli: error: "), err


def _suanli_meta(conn):
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("application", "suanli")])


LOOP = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r"


def _hostile_db(path, make):
    conn = sqlite3.connect(path)
    _suanli_meta(conn)
    for table in ("offers", "proposals", "receipts", "agreements"):
        conn.execute(make.get(table, f"CREATE TABLE {table} (id BLOB)"))
    conn.commit()
    conn.close()
    return path


HOSTILE = {
    "a recursive view for a table": {
        "agreements": f"CREATE VIEW agreements AS SELECT x AS id, x AS created_at_ms FROM ({LOOP}) ORDER BY x"},
    "a recursive view for the meta table": {"meta2": "CREATE TABLE meta2 (x)"},
    "a generated column": {
        "agreements": "CREATE TABLE agreements (id BLOB, created_at_ms INT, body BLOB AS (zeroblob(2000000000)))"},
    "a virtual table": {"agreements": "CREATE VIRTUAL TABLE agreements USING fts5(id, created_at_ms)"},
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_database_with_a_hostile_schema_is_refused_at_once(tmp_path, name):
    path = tmp_path / "evil.db"
    if name == "a recursive view for the meta table":
        conn = sqlite3.connect(path)
        conn.execute(f"CREATE VIEW meta AS SELECT 'application' AS key, 'suanli' AS value FROM ({LOOP})")
        for table in ("offers", "proposals", "receipts", "agreements"):
            conn.execute(f"CREATE TABLE {table} (id BLOB)")
        conn.commit()
        conn.close()
    else:
        _hostile_db(path, HOSTILE[name])
    assert path.stat().st_size < 64 * 1024
    code, out, err, elapsed = audit(path)
    assert_one_line(code, out, err)
    assert "not a Suanli node database" in err, err


def test_dev_zero_is_refused_before_reading():
    code, out, err, elapsed = audit("/dev/zero")
    assert_one_line(code, out, err)
    assert "not a regular file" in err


def test_a_fifo_and_a_directory_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        code, out, err, elapsed = audit(path, timeout=20)
        assert_one_line(code, out, err)


def _honest_db(path):
    return write_store(path, make_chain(P, B, 3))


def test_inputs_over_the_size_limit_are_refused_before_reading(tmp_path, monkeypatch, capsys):
    import settlement.audit as audit_module

    db = _honest_db(tmp_path / "node.db")
    bundle = tmp_path / "x.bundle"
    assert main(["export", "--db", str(db), "--out", str(bundle)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(audit_module, "MAX_BUNDLE_BYTES", bundle.stat().st_size - 1)
    monkeypatch.setattr(audit_module, "MAX_DATABASE_BYTES", db.stat().st_size - 1)
    for path in (bundle, db):
        assert main(["audit", str(path)]) == 2
        err = capsys.readouterr().err
        assert "larger than" in err and len(err.strip().splitlines()) == 1, err


def test_reading_a_database_is_under_a_time_limit(tmp_path, monkeypatch, capsys):
    import settlement.store as store_module

    db = _honest_db(tmp_path / "node.db")
    assert main(["audit", str(db)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(store_module, "READ_TIME_LIMIT_S", -1.0)  # already past, wherever it is checked
    monkeypatch.setattr(store_module, "PROGRESS_STEPS", 1)
    assert main(["audit", str(db)]) == 2
    err = capsys.readouterr().err
    assert "took longer than" in err and len(err.strip().splitlines()) == 1, err


def test_an_honest_database_still_audits_and_is_not_written(tmp_path):
    db = _honest_db(tmp_path / "node.db")
    before = db.read_bytes()
    code, out, err, _ = audit(db)
    assert code == 0, (out, err)
    assert db.read_bytes() == before


# Issue 17, item 10: cells of a tampered database rewritten as text (or as a number) are findings
# (exit 1), each one line, never a traceback; a value that is not valid UTF-8 is never decoded.
TEXT_CELLS = {
    "a receipt body cast to text": ("UPDATE receipts SET body = CAST(body AS TEXT) WHERE seq = 2", "malformed"),
    "a receipt body as hex text": ("UPDATE receipts SET body = hex(body) WHERE seq = 2", "malformed"),
    "a receipt signature as text": ("UPDATE receipts SET provider_sig = hex(provider_sig) WHERE seq = 2",
                                    "malformed"),
    "a receipt body as a number": ("UPDATE receipts SET body = 5 WHERE seq = 2", "malformed"),
    "an agreement body as text": ("UPDATE agreements SET body = CAST(body AS TEXT)", "malformed"),
    "an agreement id as text": ("UPDATE agreements SET id = CAST(id AS TEXT)", "column_mismatch"),
    "a receipt seq as text": ("UPDATE receipts SET seq = 'two' WHERE seq = 2", "column_mismatch"),
}


@pytest.mark.parametrize("name", TEXT_CELLS)
def test_a_database_cell_rewritten_as_text_is_a_finding_not_a_traceback(tmp_path, name):
    sql, rule = TEXT_CELLS[name]
    db = _honest_db(tmp_path / "node.db")
    conn = sqlite3.connect(db)
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{trigger}"')
    conn.execute(sql)
    conn.commit()
    conn.close()
    code, out, err, _ = audit(db)
    assert code == 1 and err == "", (code, out, err)
    assert f": {rule}: " in out, out
    assert "\ufffd" not in out and "Traceback" not in out
