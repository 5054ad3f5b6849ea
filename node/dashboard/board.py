"""What the dashboard shows, kept current: the daemon's in-memory status and the provider's receipts.

``Board`` is the one reader. Its owner (node.dashboard.serve) calls ``refresh`` in a worker thread once
a second; each refresh reads only what changed in the database (``changed``: the database file
and its write-ahead log, by size and time) and publishes a new ``snapshot`` with a higher ``version``
when anything shown differs. Server-sent-event streams wait on ``version`` (node.dashboard.app).

Rule 1 (read-only): the database is opened read-only (settlement.store Rule 5) on a connection of the
board's own, per refresh; the daemon's status is ``ProviderRuntime.status()`` (the control socket's
view), taken by the owner in the daemon's thread and handed in; nothing else of the daemon is touched.
Nothing here can sign, spend or change.
Rule 2 (incremental): a settled agreement (final receipt co-signed, node.dashboard.model) is folded into
the earnings buckets once and never read again; of an open one, only receipts not seen before are read
whole, and of those seen without the buyer's countersignature only whether they have it now.
Rule 3: the audit verdict is the offline audit's (settlement.audit, as ``suanli audit`` runs it), computed
when asked and kept until the database changes.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from node.dashboard.model import Point, bucket, cosigned_total, earned_deltas, earnings, pending, samples, settled

MAX_ERRORS = 20
MALFORMED = {"issued_at_ms": 0, "metered_ms": 0, "amount_micros": 0, "cpu_core_ms": 0, "mem_peak_bytes": 0,
             "gpu_ms": 0, "state": "malformed", "reason": "does not decode", "exit_code": None, "cosigned": False}


def _point(seq: int, body: bytes, cosigned: bool) -> Point | None:
    """The receipt as a Point; None when its body does not decode (the audit names it: Rule 3)."""
    from p2p.errors import SuanliError
    from p2p.receipt_records import Receipt

    try:
        r = Receipt.decode(bytes(body))
    except (SuanliError, ValueError, TypeError):
        return None
    return Point(seq=seq, issued_at_ms=r.issued_at_ms, metered_ms=r.metered_ms, amount_micros=r.amount_micros,
                 cpu_core_ms=r.usage.cpu_core_ms, mem_peak_bytes=r.usage.mem_peak_bytes, gpu_ms=r.usage.gpu_ms,
                 state=r.state, reason=r.reason, exit_code=r.exit_code, cosigned=cosigned,
                 gpu_sm_pct_ms=r.usage.gpu_sm_pct_ms)


class Board:
    def __init__(self, db_path: Path, *, url: str = "") -> None:
        self.db_path = db_path
        self.url = url
        self.lock = threading.Lock()
        self.version = 0
        self.snapshot: dict[str, Any] = {}
        self._seen: tuple[int, ...] = ()
        self._open: dict[bytes, list[Point]] = {}  # agreement -> its receipts (Rule 2)
        self._settled: dict[bytes, int] = {}  # agreement -> its co-signed total, folded into _buckets
        self._buckets: collections.Counter[tuple[str, int]] = collections.Counter()
        self._audit: tuple[tuple[int, ...], dict[str, Any]] | None = None

    def changed(self) -> tuple[int, ...]:
        sig: list[int] = []
        for path in (self.db_path, self.db_path.with_name(self.db_path.name + "-wal")):
            try:
                st = os.stat(path)
                sig += [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                sig += [-1, -1]
        return tuple(sig)

    def _read_receipts(self) -> None:
        from settlement.store import Store

        if not self.db_path.exists():
            return
        with Store(self.db_path, readonly=True) as store:
            for agreement_id in store.agreement_ids():
                if agreement_id in self._settled:
                    continue
                points = self._open.setdefault(agreement_id, [])
                # Read-only, on the store's own distrusting connection (settlement.store Rule 5): the new
                # receipts' bodies, and for those seen unsigned only whether they are co-signed now.
                rows = store.conn.execute(
                    "SELECT seq, body, buyer_sig IS NOT NULL FROM receipts WHERE agreement_id = ? AND seq > ? "
                    "ORDER BY seq", (agreement_id, points[-1].seq if points else -1)).fetchall()
                first_open = next((p.seq for p in points if not p.cosigned), None)
                if first_open is not None:
                    signed = {row[0] for row in store.conn.execute(
                        "SELECT seq FROM receipts WHERE agreement_id = ? AND seq >= ? AND buyer_sig IS NOT NULL",
                        (agreement_id, first_open))}
                    points[:] = [replace(p, cosigned=True) if not p.cosigned and p.seq in signed else p
                                 for p in points]
                points += [p for p in (_point(s, b, bool(c)) for s, b, c in rows) if p is not None]
                if settled(points):
                    bucket(earned_deltas(points), self._buckets)
                    self._settled[agreement_id] = cosigned_total(points)
                    del self._open[agreement_id]

    def read_changes(self) -> bool:
        """Rule 2: read the receipts only when the database changed since the last read; True when it had."""
        sig = self.changed()
        if sig == self._seen:
            return False
        self._read_receipts()
        self._seen = sig
        return True

    def money(self, now_ms: int) -> dict[str, object]:
        """The co-signed amounts per hour and day, all time, and pending (node.dashboard.model Rule 1): the
        provider's earnings, the buyer's spend (node.dashboard.buyer): the same receipts, seen from each side."""
        buckets = collections.Counter(self._buckets)
        for points in self._open.values():
            bucket(earned_deltas(points), buckets)
        total = sum(self._settled.values()) + sum(cosigned_total(p) for p in self._open.values())
        return earnings(buckets, total, sum(pending(p) for p in self._open.values()), now_ms)

    def publish(self, snapshot: dict[str, Any]) -> bool:
        """The new snapshot, with a higher ``version``, when it differs from the one shown; True then."""
        with self.lock:
            if snapshot == self.snapshot:
                return False
            self.snapshot = snapshot
            self.version += 1
            return True

    def refresh(self, status: dict[str, Any], now_ms: int | None = None) -> bool:
        """Read what changed; True when the snapshot (and ``version``) moved on. ``status`` is the daemon's
        (``ProviderRuntime.status()``), taken by the caller in the daemon's own thread."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self.read_changes()
        jobs = []
        for job in status.get("jobs", []):  # type: ignore[union-attr]
            points = self._open.get(bytes.fromhex(job["agreement_id"]), [])
            jobs.append({**job, "samples": samples(points)})
        snapshot = {
            "status": {"peer_id": status.get("peer_id"), "addrs": status.get("addrs", []),
                       "reachability": status.get("reachability", "unknown"), "accepting": status.get("accepting"),
                       "connected_peers": status.get("connected_peers"), "offer": status.get("offer"),
                       "owner": status.get("owner"), "dashboard": self.url},
            "jobs": jobs,
            "earnings": self.money(now_ms),
            "errors": list(status.get("last_errors", []))[-MAX_ERRORS:],  # type: ignore[call-overload]
        }
        return self.publish(snapshot)

    def audits(self) -> dict[str, Any]:
        """Rule 3: {agreement id hex: audit document (node.commands.evidence.audit_json)}."""
        from node.commands.evidence import audit_json
        from settlement.audit import audit, read_inputs

        sig = self.changed()
        cached = self._audit
        if cached is not None and cached[0] == sig:
            return cached[1]
        results = audit(read_inputs([self.db_path])) if self.db_path.exists() else []
        docs = {r.report.agreement_id.hex(): audit_json(r) for r in results}
        self._audit = (sig, docs)
        return docs

    def logs(self, agreement_id: bytes) -> list[dict[str, str]]:
        """A job's output: the provider keeps none (the buyer's board does: node.dashboard.buyer)."""
        return []

    def receipts(self, agreement_id: bytes) -> list[dict[str, Any]]:
        from settlement.store import Store

        with Store(self.db_path, readonly=True) as store:
            rows = store.conn.execute("SELECT seq, body, buyer_sig IS NOT NULL FROM receipts WHERE agreement_id = ? "
                                      "ORDER BY seq", (agreement_id,)).fetchall()
        points = [(s, _point(s, b, bool(c))) for s, b, c in rows]
        return [p.__dict__ if p is not None else {**MALFORMED, "seq": s} for s, p in points]
