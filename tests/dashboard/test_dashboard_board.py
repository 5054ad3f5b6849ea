"""node.dashboard.board against a real SQLite store holding real signed receipts (settlement.testing):
receipts arriving, a countersignature arriving late, a settled agreement folded, a body that no longer
decodes, and the audit verdict."""

from __future__ import annotations

import sqlite3

from node.dashboard.board import Board
from p2p.envelope import countersign, sign_record
from settlement.store import Store
from settlement.testing import key_from_label, make_agreement, make_chain, next_receipt, write_store

PROVIDER, BUYER = key_from_label("provider"), key_from_label("buyer")
NOW = 1_800_000_100_000


def _status(*agreements: bytes) -> dict:
    return {"peer_id": "p", "addrs": [], "accepting": True, "offer": None, "last_errors": [],
            "jobs": [{"agreement_id": a.hex(), "buyer": "b", "state": "running"} for a in agreements]}


def test_receipts_as_they_arrive_and_a_late_countersignature(tmp_path):
    db = tmp_path / "node.db"
    offer, proposal, agreement = make_agreement(PROVIDER, BUYER, nonce=b"\x01" * 16)
    done = make_chain(PROVIDER, BUYER, 3, nonce=b"\x02" * 16)  # settled: final and co-signed
    board = Board(db)
    with Store(db) as store:
        for o, p, a in ((offer, proposal, agreement), (done.offer, done.proposal, done.agreement)):
            store.put_offer(o)
            store.put_proposal(p)
            store.put_agreement(a)
        for r in done.receipts:
            store.append_receipt(r)
        first = next_receipt(agreement, None, agreement.record_id)
        unsigned = sign_record(first, PROVIDER)
        store.append_receipt(unsigned)
        assert board.refresh(_status(agreement.record_id), NOW)
        settled_total = done.receipts[-1].record.amount_micros
        earn = board.snapshot["earnings"]
        assert earn["cosigned_micros"] == settled_total and earn["pending_micros"] == first.amount_micros
        assert board.snapshot["jobs"][0]["samples"][0]["cpu_cores"] == 0.9
        assert not board.refresh(_status(agreement.record_id), NOW)  # nothing changed: no new version
        store.append_receipt(countersign(unsigned, BUYER))
        second = next_receipt(agreement, first, unsigned.record_id)
        store.append_receipt(countersign(sign_record(second, PROVIDER), BUYER))
    assert board.refresh(_status(agreement.record_id), NOW)
    earn = board.snapshot["earnings"]
    assert earn["cosigned_micros"] == settled_total + second.amount_micros and earn["pending_micros"] == 0
    assert sum(b["micros"] for b in earn["per_day"]) == earn["cosigned_micros"]
    assert done.agreement.record_id in board._settled and agreement.record_id in board._open
    assert [r["seq"] for r in board.receipts(agreement.record_id)] == [1, 2]
    verdicts = board.audits()
    assert verdicts[done.agreement.record_id.hex()]["ok"]


def test_a_body_that_no_longer_decodes_is_shown_and_fails_the_audit(tmp_path):
    chain = make_chain(PROVIDER, BUYER, 2, final=False)
    db = write_store(tmp_path / "node.db", chain)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER receipts_no_rewrite")
    conn.execute("UPDATE receipts SET body = x'00' WHERE seq = 2")
    conn.commit()
    conn.close()
    board = Board(db)
    assert board.refresh(_status(), NOW)  # the refresh goes on: the bad receipt is left out of the figures
    assert board.snapshot["earnings"]["cosigned_micros"] == chain.receipts[0].record.amount_micros
    rows = board.receipts(chain.agreement.record_id)
    assert [r["state"] for r in rows] == ["running", "malformed"]
    assert not board.audits()[chain.agreement.record_id.hex()]["ok"]
