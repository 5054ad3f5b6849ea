"""L3: a node's database holds its evidence and a buyer's --env values (in the signed proposal), so the
file, its -wal and -shm, and the data directory it creates are the owner's alone, whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from contextlib import contextmanager

import pytest

from settlement.store import Store


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:  # noqa: ANN001
    return stat.S_IMODE(os.lstat(path).st_mode)


def _fill(store, ev) -> None:  # noqa: ANN001
    store.put_offer(ev.offer)
    store.put_proposal(ev.proposal)
    store.put_agreement(ev.agreement)
    for r in ev.receipts:
        store.append_receipt(r)


def test_a_new_database_and_its_directory_are_private_under_umask_0(tmp_path, evidence):
    home = tmp_path / "parent" / "home"
    db = home / "node.db"
    with umask(0), Store(db) as store:
        _fill(store, evidence)
        sidecars = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in sidecars)
        assert {p.name: _mode(p) for p in (db, *sidecars)} == {"node.db": 0o600, "node.db-wal": 0o600,
                                                               "node.db-shm": 0o600}
    assert _mode(home) == 0o700
    assert _mode(tmp_path / "parent") == 0o777  # parents are left to the umask, as mkdir -p does


def test_an_existing_world_readable_database_is_made_private_when_opened(tmp_path, evidence):
    db = tmp_path / "node.db"
    with umask(0):
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()  # -wal and -shm stay while this connection is open
        assert _mode(db) in (0o644, 0o666)
        with Store(db) as store:
            _fill(store, evidence)
            for path in (db, db.with_name("node.db-wal"), db.with_name("node.db-shm")):
                assert _mode(path) == 0o600, path
        conn.close()


def test_a_readonly_open_changes_no_mode(tmp_path, evidence):
    db = tmp_path / "node.db"
    with Store(db) as store:
        _fill(store, evidence)
    os.chmod(db, 0o640)
    with Store(db, readonly=True):
        pass
    assert _mode(db) == 0o640


@pytest.mark.skipif(os.getuid() == 0, reason="root may open any file")
def test_a_database_it_cannot_open_is_one_error(tmp_path):
    from p2p.errors import SuanliError

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SuanliError):
        Store(locked / "sub" / "node.db")
