"""The node's SQLite store: one file per node, the only module that imports sqlite.

Rule 1 (durability): every write is a transaction in WAL mode with ``synchronous=FULL`` (one write,
or a batch of receipts committed together: ``append_receipts``); a method returns only after its
transaction is durable, so a receipt the node acknowledges after
``append_receipt`` returned survives ``kill -9`` (and power loss, as far as the disk honours fsync).
Rule 2 (append-only evidence): agreements and receipts are never deleted and their bodies never
change; the only update is adding the buyer's countersignature where there was none. Triggers in
the database enforce this, whatever code runs against the file.
Rule 3: what comes out is what went in: bodies and signatures as they were signed (an export is
byte-for-byte the evidence); a text cell where a blob belongs comes back as ``TextValue``, never decoded.
Rule 5 (hostile files): a read-only store opens only a regular file, with ``mode=ro``,
``trusted_schema=OFF`` and ``query_only``, checks that the tables it reads are plain tables (never a
view, a virtual table or a generated column) before reading one, caps the size of a value, and stops
any statement past a time limit that grows with the file (UnusableInputError, exit 2).
Rule 4 (privacy): the file is its owner's alone (``make_private``, settlement.private).

Schema and queries go through sqlite-utils; the connection is plain sqlite3 so that pragmas and
transactions are explicit.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from p2p.clock import wall_ms
from p2p.envelope import Signed
from p2p.errors import UnusableInputError
from p2p.receipt_records import FINAL, Receipt
from settlement.errors import StoreError
from settlement.private import make_private as make_private  # where callers have found it

SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS receipts_no_delete BEFORE DELETE ON receipts
       BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS receipts_no_rewrite BEFORE UPDATE ON receipts
       WHEN OLD.body IS NOT NEW.body OR OLD.provider_sig IS NOT NEW.provider_sig OR OLD.id IS NOT NEW.id
         OR OLD.agreement_id IS NOT NEW.agreement_id OR OLD.seq IS NOT NEW.seq
         OR (OLD.buyer_sig IS NOT NULL AND OLD.buyer_sig IS NOT NEW.buyer_sig)
       BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS agreements_no_delete BEFORE DELETE ON agreements
       BEGIN SELECT RAISE(ABORT, 'agreements are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS agreements_no_rewrite BEFORE UPDATE ON agreements
       WHEN OLD.body IS NOT NEW.body OR OLD.provider_sig IS NOT NEW.provider_sig OR OLD.id IS NOT NEW.id
         OR (OLD.buyer_sig IS NOT NULL AND OLD.buyer_sig IS NOT NEW.buyer_sig)
       BEGIN SELECT RAISE(ABORT, 'agreements are append-only'); END""",
]


# Rule 5: how a read-only store (``suanli audit``, ``export``) reads a file that may be hostile.
_READ_TABLES = ("meta", "offers", "proposals", "agreements", "receipts")
READ_TIME_LIMIT_S = 30.0  # plus 1 s per 4 MiB of file: reading a database never takes longer
MAX_VALUE_BYTES = 64 << 20  # no text or blob the store reads is larger (a Statement is at most 16 MiB)
PROGRESS_STEPS = 10_000  # sqlite virtual-machine steps between two looks at the clock


def read_time_limit_s(size_bytes: int) -> float:
    return READ_TIME_LIMIT_S + size_bytes / (4 << 20)


def _distrust(conn: sqlite3.Connection, deadline: float) -> None:
    """Rule 5: nothing in the file's schema runs with trust, nothing is written, no value grows past
    ``MAX_VALUE_BYTES``, and every statement is interrupted past ``deadline`` (time.monotonic)."""
    conn.execute("PRAGMA trusted_schema=OFF")
    conn.execute("PRAGMA query_only=ON")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)


class TextValue(bytes):
    """A text cell's raw bytes (Rule 3), under a type no decoder takes for a body or a signature."""


@dataclass(frozen=True)
class StoredChain:
    """One agreement's evidence as stored: envelopes in wire form (``{"body", "sigs"}``)."""

    agreement: dict[str, Any]
    offer: dict[str, Any] | None
    proposal: dict[str, Any] | None
    receipts: list[dict[str, Any]]


def _envelope(body: bytes, *sigs: bytes | None) -> dict[str, Any]:
    return {"body": body, "sigs": [s for s in sigs if s is not None]}


class Store:
    """A node's database. Not thread-safe: use one Store per thread (or the async wrapper)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                size = self._check_is_store_file()
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
                _distrust(conn, time.monotonic() + read_time_limit_s(size))
            else:
                make_private(self.path)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self.conn = conn
            self.db = sqlite_utils.Database(conn)
            if not readonly:
                self._create_schema()
            else:
                self._check_untrusted_schema()
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise self._read_error(exc) from exc

    def _read_error(self, exc: sqlite3.DatabaseError) -> UnusableInputError:
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc):
            return UnusableInputError(f"{self.path}: reading it took longer than {READ_TIME_LIMIT_S:g} s (plus "
                                      "1 s per 4 MiB): not a usable Suanli database", path=str(self.path))
        return UnusableInputError(f"{self.path}: not a usable Suanli database ({exc})", path=str(self.path))

    def _check_is_store_file(self) -> int:
        """Rule 5: a regular file (a FIFO is not even opened for long: O_NONBLOCK) that starts like an
        SQLite database; its size."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                head = os.read(fd, len(SQLITE_MAGIC)) if stat.S_ISREG(st.st_mode) else b""
            finally:
                os.close(fd)
        except OSError as exc:
            raise UnusableInputError(f"{self.path}: {exc.strerror}", path=str(self.path)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise UnusableInputError(f"{self.path}: not a regular file", path=str(self.path))
        if head != SQLITE_MAGIC:
            raise UnusableInputError(f"{self.path}: not an SQLite database", path=str(self.path))
        return st.st_size

    def _check_untrusted_schema(self) -> None:
        """Rule 5: the tables a read-only store reads are plain tables: no view (which could loop), no
        virtual table, no generated column (computed on every read). Nothing else in the file is read."""
        rows = self.conn.execute(
            f"SELECT name, type, sql FROM sqlite_master WHERE name IN ({', '.join('?' * len(_READ_TABLES))})",
            _READ_TABLES).fetchall()
        found = {name: (kind, sql or "") for name, kind, sql in rows}
        for name in _READ_TABLES:
            kind, sql = found.get(name, ("missing", ""))
            if kind != "table":
                what = f"is a {kind}, not a table" if kind != "missing" else "is missing"
                raise UnusableInputError(f"{self.path}: not a Suanli node database: {name} {what}",
                                         path=str(self.path))
            if sql.lstrip()[:14].upper().startswith("CREATE VIRTUAL"):
                raise UnusableInputError(f"{self.path}: not a Suanli node database: {name} is a virtual table",
                                         path=str(self.path))
            if any(row[6] for row in self.conn.execute(f'PRAGMA table_xinfo("{name}")')):
                raise UnusableInputError(f"{self.path}: not a Suanli node database: {name} has generated or "
                                         "hidden columns", path=str(self.path))

    def _create_schema(self) -> None:
        db = self.db
        with self._transaction():
            db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db["offers"].create({"id": bytes, "provider": bytes, "seq": int, "body": bytes, "sig": bytes},
                                pk="id", not_null={"provider", "seq", "body", "sig"}, if_not_exists=True)
            db["proposals"].create({"id": bytes, "buyer": bytes, "provider": bytes, "body": bytes, "sig": bytes},
                                   pk="id", not_null={"body", "sig"}, if_not_exists=True)
            db["agreements"].create(
                {"id": bytes, "provider": bytes, "buyer": bytes, "offer_id": bytes, "proposal_id": bytes,
                 "created_at_ms": int, "body": bytes, "provider_sig": bytes, "buyer_sig": bytes,
                 "stored_at_ms": int},
                pk="id", not_null={"provider", "buyer", "body", "provider_sig"}, if_not_exists=True)
            db["receipts"].create(
                {"agreement_id": bytes, "seq": int, "id": bytes, "body": bytes, "provider_sig": bytes,
                 "buyer_sig": bytes, "stored_at_ms": int},
                pk=("agreement_id", "seq"), not_null={"id", "body", "provider_sig"}, if_not_exists=True)
            db["outcomes"].create({"peer": bytes, "outcome": str, "agreement_id": bytes, "at_ms": int},
                                  pk=("peer", "agreement_id", "outcome"), not_null={"at_ms"}, if_not_exists=True)
            for trigger in _TRIGGERS:
                self.conn.execute(trigger)
            self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('application', 'suanli')")

    def _check_schema(self) -> None:
        try:
            rows = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise UnusableInputError(f"{self.path}: not a Suanli node database", path=str(self.path)) from exc
        if rows.get("application") != "suanli":
            raise UnusableInputError(f"{self.path}: not a Suanli node database", path=str(self.path))
        if rows.get("schema_version") != str(SCHEMA_VERSION):
            raise UnusableInputError(f"{self.path}: database schema {rows.get('schema_version')} is not "
                                     f"supported (this build reads {SCHEMA_VERSION})", path=str(self.path))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One durable transaction; sqlite's exceptions become StoreError here, once."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: sqlite3.DatabaseError) -> StoreError:
        return StoreError(f"{self.path}: {exc}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (each one durable on return: Rule 1) --------------------------------------------

    def put_offer(self, signed: Signed[Any]) -> None:
        r = signed.record
        self._write("INSERT OR IGNORE INTO offers(id, provider, seq, body, sig) VALUES (?, ?, ?, ?, ?)",
                    (signed.record_id, r.provider, r.seq, signed.body, signed.sigs[0]))

    def put_proposal(self, signed: Signed[Any]) -> None:
        r = signed.record
        self._write("INSERT OR IGNORE INTO proposals(id, buyer, provider, body, sig) VALUES (?, ?, ?, ?, ?)",
                    (signed.record_id, r.buyer, r.provider, signed.body, signed.sigs[0]))

    def put_agreement(self, signed: Signed[Any]) -> None:
        """Store an agreement, or add the buyer's countersignature to the stored one."""
        r = signed.record
        buyer_sig = signed.sigs[1] if len(signed.sigs) > 1 else None
        with self._transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO agreements(id, provider, buyer, offer_id, proposal_id, created_at_ms, body,"
                " provider_sig, buyer_sig, stored_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (signed.record_id, r.provider, r.buyer, r.offer_id, r.proposal_id, r.created_at_ms, signed.body,
                 signed.sigs[0], buyer_sig, wall_ms()))
            if buyer_sig is not None:
                self.conn.execute("UPDATE agreements SET buyer_sig = ? WHERE id = ? AND buyer_sig IS NULL",
                                  (buyer_sig, signed.record_id))

    def append_receipt(self, signed: Signed[Any]) -> None:
        """Store receipt n, or add the buyer's countersignature to stored receipt n.

        StoreError when a different receipt is already stored for the same (agreement, seq): the
        store never holds two histories of one agreement.
        """
        error = self.append_receipts([signed])[0]
        if error is not None:
            raise error

    def append_receipts(self, batch: Sequence[Signed[Any]]) -> list[StoreError | None]:
        """``append_receipt`` for many receipts in one durable transaction (a group commit).

        Each receipt is applied under its own savepoint, so one that is refused (its StoreError is
        returned in its place) leaves the others to commit. Raises StoreError, with nothing written,
        when the transaction itself fails.
        """
        results: list[StoreError | None] = []
        with self._transaction():
            for signed in batch:
                self.conn.execute("SAVEPOINT receipt")
                try:
                    self._append_one(signed)
                except (StoreError, sqlite3.DatabaseError) as exc:
                    self.conn.execute("ROLLBACK TO receipt")
                    results.append(exc if isinstance(exc, StoreError) else self._error(exc))
                else:
                    results.append(None)
                self.conn.execute("RELEASE receipt")
        return results

    def _append_one(self, signed: Signed[Any]) -> None:
        r = signed.record
        rid = signed.record_id
        buyer_sig = signed.sigs[1] if len(signed.sigs) > 1 else None
        row = self.conn.execute("SELECT id, buyer_sig FROM receipts WHERE agreement_id = ? AND seq = ?",
                                (r.agreement_id, r.seq)).fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO receipts(agreement_id, seq, id, body, provider_sig, buyer_sig, stored_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (r.agreement_id, r.seq, rid, signed.body, signed.sigs[0], buyer_sig, wall_ms()))
        elif row[0] != rid:
            raise StoreError(f"a different receipt {r.seq} is already stored for agreement "
                             f"{r.agreement_id.hex()[:16]}", agreement_id=r.agreement_id, seq=r.seq)
        elif buyer_sig is not None and row[1] is None:
            self.conn.execute("UPDATE receipts SET buyer_sig = ? WHERE agreement_id = ? AND seq = ?",
                              (buyer_sig, r.agreement_id, r.seq))

    def record_outcome(self, peer: bytes, outcome: str, agreement_id: bytes, at_ms: int) -> None:
        """What happened with a peer on one agreement (market.reputation); once per kind per agreement."""
        self._write("INSERT OR IGNORE INTO outcomes(peer, outcome, agreement_id, at_ms) VALUES (?, ?, ?, ?)",
                    (peer, outcome, agreement_id, at_ms))

    def outcome_counts(self) -> list[tuple[bytes, str, int]]:
        return [(row[0], row[1], row[2]) for row in self.conn.execute(
            "SELECT peer, outcome, COUNT(*) FROM outcomes GROUP BY peer, outcome")]

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._transaction():
            self.conn.execute(sql, params)

    # -- reads ------------------------------------------------------------------------------------

    def agreement_ids(self) -> list[bytes]:
        return [row["id"] for row in self.db.query("SELECT id FROM agreements ORDER BY created_at_ms, id")]

    def find_agreements(self, prefix_hex: str) -> list[bytes]:
        prefix = prefix_hex.lower()
        return [a for a in self.agreement_ids() if a.hex().startswith(prefix)]

    def last_receipt(self, agreement_id: bytes) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT body, provider_sig, buyer_sig FROM receipts WHERE agreement_id = ?"
                                  " ORDER BY seq DESC LIMIT 1", [agreement_id]))
        return _envelope(rows[0]["body"], rows[0]["provider_sig"], rows[0]["buyer_sig"]) if rows else None

    def load_chain(self, agreement_id: bytes) -> StoredChain:
        rows = list(self.db.query("SELECT * FROM agreements WHERE id = ?", [agreement_id]))
        if not rows:
            raise StoreError(f"no agreement {agreement_id.hex()} in {self.path}", agreement_id=agreement_id)
        ag = rows[0]
        offer = next(iter(self.db.query("SELECT body, sig FROM offers WHERE id = ?", [ag["offer_id"]])), None)
        proposal = next(iter(self.db.query("SELECT body, sig FROM proposals WHERE id = ?", [ag["proposal_id"]])),
                        None)
        receipts = [_envelope(row[0], row[1], row[2]) for row in self.conn.execute(
            "SELECT body, provider_sig, buyer_sig FROM receipts WHERE agreement_id = ? ORDER BY seq",
            (agreement_id,))]
        return StoredChain(
            agreement=_envelope(ag["body"], ag["provider_sig"], ag["buyer_sig"]),
            offer=_envelope(offer["body"], offer["sig"]) if offer else None,
            proposal=_envelope(proposal["body"], proposal["sig"]) if proposal else None,
            receipts=receipts)

    @contextmanager
    def _reading_raw(self) -> Iterator[None]:
        """Rule 3's ``TextValue`` for text cells; sqlite's errors as UnusableInputError (Rule 5)."""
        self.conn.text_factory = TextValue
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._read_error(exc) from exc
        finally:
            self.conn.text_factory = str

    def evidence_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Every agreement row and every receipt row, columns and all, as the audit reads a database
        (settlement.dbread: the signed bodies decide, the columns are checked against them)."""
        with self._reading_raw():
            return (self.conn.execute("SELECT id, provider, buyer, offer_id, proposal_id, created_at_ms, body, "
                                      "provider_sig, buyer_sig FROM agreements ORDER BY created_at_ms, id").fetchall(),
                    self.conn.execute("SELECT agreement_id, seq, id, body, provider_sig, buyer_sig FROM receipts"
                                      ).fetchall())

    def signed_row(self, table: str, record_id: bytes) -> dict[str, Any] | None:
        """The envelope of an offer or proposal by id, as stored (None: not there)."""
        with self._reading_raw():
            name = {"offers": "offers", "proposals": "proposals"}[table]  # never a name from elsewhere
            row = self.conn.execute(f"SELECT body, sig FROM {name} WHERE id = ?", (record_id,)).fetchone()
        return _envelope(row[0], row[1]) if row is not None else None

    def max_offer_seq(self, provider: bytes) -> int:
        """The highest offer seq this node stored for ``provider`` (0 if none): seq survives restarts."""
        row = self.conn.execute("SELECT MAX(seq) FROM offers WHERE provider = ?", (provider,)).fetchone()
        return int(row[0] or 0)

    def open_agreements(self, provider: bytes) -> list[StoredChain]:
        """Agreements where ``provider`` is the provider and no final receipt is stored yet."""
        out = []
        for ag_id in [row[0] for row in self.conn.execute(
                "SELECT id FROM agreements WHERE provider = ? AND buyer_sig IS NOT NULL", (provider,))]:
            last = self.last_receipt(ag_id)
            if last is None or Receipt.decode(last["body"]).state != FINAL:
                out.append(self.load_chain(ag_id))
        return out

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

