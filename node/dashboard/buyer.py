"""What the buyer's side of the dashboard shows (issue 20: "the agent serves the same pages for the buyer's
side"): the buyer's own database (``<data dir>/buyer.db``) and the job logs it stored (node.joblog).

``BuyerBoard`` is the provider's ``Board`` (node.dashboard.board) pointed at the buyer's database, with the
jobs table of ``suanli jobs`` (node.commands.history) in place of the daemon's running jobs. Its owner
(node.dashboard.serve) refreshes it once a second, in a worker thread, as it does the provider's.

Rule 1 (read-only): as the provider's board (board Rule 1): ``buyer.db`` is opened read-only on a
connection of the board's own; the logs are read, never written. ``status`` is the agent's
(``Agent.status()``), taken by the owner in the agent's thread.
Rule 2 (the figures): a job's row is ``suanli jobs``' (history Rule 1: billed seconds and amount are the last
receipt the buyer countersigned). Spend per hour and per day is the board's money (node.dashboard.model
Rule 1) over the same receipts: what the buyer countersigned, in the hour it was issued; what a provider
claimed and the buyer did not countersign is ``pending_micros``, apart.
Rule 3 (incremental): a job whose final receipt the buyer countersigned cannot change: its row is read once
and kept; the others are read again only when the database changed (board Rule 2).
Rule 4: a chain that does not decode (a tampered database) is a row saying so, never a failed refresh;
its audit (board Rule 3) names what is wrong.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from node.dashboard.board import Board

BUYER_DB = "buyer.db"
MAX_LOG_RECORDS = 1000  # shown on an agreement's page (the newest); /api/logs/{id} gives them all


def _settled_row(row: dict[str, Any]) -> bool:
    return row.get("state") == "ended" and not row.get("pending_micros")


class BuyerBoard(Board):
    def __init__(self, home: Path, *, url: str = "") -> None:
        super().__init__(home / BUYER_DB, url=url)
        self.home = home
        self._rows: dict[bytes, dict[str, Any]] = {}

    def _read_jobs(self) -> None:
        """Rules 2 to 4: ``suanli jobs``' row of every agreement not settled when last read."""
        from node.commands.history import job_row
        from p2p.errors import SuanliError
        from settlement.store import Store

        if not self.db_path.exists():
            return
        with Store(self.db_path, readonly=True) as store:
            for agreement_id in store.agreement_ids():
                if agreement_id in self._rows and _settled_row(self._rows[agreement_id]):
                    continue
                try:
                    self._rows[agreement_id] = job_row(agreement_id, store.load_chain(agreement_id))
                except (SuanliError, ValueError, TypeError, KeyError, IndexError) as exc:
                    self._rows[agreement_id] = {
                        "agreement_id": agreement_id.hex(), "provider": None, "image": None, "command": [],
                        "started_at_ms": 0, "price_micros_per_s": 0, "billed_ms": 0, "amount_micros": 0,
                        "pending_micros": 0, "exit_code": None, "reason": f"does not decode: {exc}",
                        "state": "malformed", "receipts": 0}

    def refresh(self, status: dict[str, Any], now_ms: int | None = None) -> bool:
        """Read what changed; True when the snapshot (and ``version``) moved on."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if self.read_changes():
            self._read_jobs()
        jobs = sorted(self._rows.values(), key=lambda r: (-int(r["started_at_ms"]), r["agreement_id"]))
        snapshot = {
            "status": {"peer_id": status.get("peer_id"), "addrs": status.get("addrs", []),
                       "data_dir": str(self.home), "offers": status.get("offers"), "running": status.get("jobs"),
                       "dashboard": self.url},
            "jobs": jobs,
            "spend": self.money(now_ms),
        }
        return self.publish(snapshot)

    def logs(self, agreement_id: bytes) -> list[dict[str, str]]:
        """The job's output as the buyer received it (node.joblog), each line ``{stream, text}``; bytes that
        are not UTF-8 are shown as U+FFFD. No stored log: an empty list."""
        from node.joblog import log_path, read_records

        path = log_path(self.home, agreement_id)
        if not path.exists():
            return []
        return [{"stream": stream, "text": data.decode("utf-8", "replace")} for stream, data in read_records(path)]
