"""The node's SQLite store: append-only evidence, countersignatures, and durability under kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from p2p.envelope import Signed
from p2p.errors import StoreError, UnusableInputError
from settlement.chain import verify_chain
from settlement.store import Store
from settlement.testing import key_from_label, make_chain, resign


def fill(store, ev, *, cosigned=True):
    store.put_offer(ev.offer)
    store.put_proposal(ev.proposal)
    store.put_agreement(ev.agreement)
    for r in ev.receipts:
        store.append_receipt(r if cosigned else Signed(r.body, r.record, r.sigs[:1]))


def test_stored_chain_is_byte_for_byte_the_evidence(tmp_path, evidence):
    with Store(tmp_path / "n.db") as store:
        fill(store, evidence)
        assert store.agreement_ids() == [evidence.agreement.record_id]
        assert store.load_chain(evidence.agreement.record_id) == evidence.stored()
        assert store.integrity_ok()


def test_countersignature_is_added_later_and_only_once(tmp_path, evidence):
    with Store(tmp_path / "n.db") as store:
        fill(store, evidence, cosigned=False)
        chain = store.load_chain(evidence.agreement.record_id)
        assert all(len(r["sigs"]) == 1 for r in chain.receipts)
        for r in evidence.receipts:
            store.append_receipt(r)
        assert store.load_chain(evidence.agreement.record_id) == evidence.stored()


def test_a_different_receipt_for_the_same_seq_is_refused(tmp_path, evidence, provider_key, buyer_key):
    from dataclasses import replace

    with Store(tmp_path / "n.db") as store:
        fill(store, evidence)
        other = resign(replace(evidence.receipts[1].record, issued_at_ms=1), provider_key, buyer_key)
        with pytest.raises(StoreError, match="different receipt"):
            store.append_receipt(other)


@pytest.mark.parametrize("sql", [
    "DELETE FROM receipts",
    "UPDATE receipts SET body = x'00' WHERE seq = 1",
    "UPDATE receipts SET buyer_sig = x'00' WHERE seq = 1",
    "DELETE FROM agreements",
    "UPDATE agreements SET provider_sig = x'00'",
])
def test_triggers_keep_evidence_append_only_whatever_code_runs(tmp_path, evidence, sql):
    with Store(tmp_path / "n.db") as store:
        fill(store, evidence)
    conn = sqlite3.connect(tmp_path / "n.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql)
    conn.close()


def test_readonly_open_refuses_files_that_are_not_suanli_databases(tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(UnusableInputError, match="not a Suanli node database"):
        Store(other, readonly=True)
    text = tmp_path / "text.db"
    text.write_text("hello")
    with pytest.raises(UnusableInputError, match="not an SQLite database"):
        Store(text, readonly=True)


WRITER = textwrap.dedent("""
    import sys
    from settlement.store import Store
    from settlement.testing import key_from_label, make_agreement, next_receipt, resign
    from p2p.envelope import sign_record, countersign
    p, b = key_from_label("provider"), key_from_label("buyer")
    offer, proposal, agreement = make_agreement(p, b)
    store = Store(sys.argv[1])
    store.put_offer(offer); store.put_proposal(proposal); store.put_agreement(agreement)
    prev, prev_id = None, agreement.record_id
    for i in range(100000):
        r = next_receipt(agreement, prev, prev_id)
        signed = resign(r, p, b)
        store.append_receipt(signed)
        print(r.seq, flush=True)  # the acknowledgement: only after append_receipt returned
        prev, prev_id = r, signed.record_id
""")


@pytest.mark.parametrize("acks_before_kill", [3, 40, 200])
def test_acknowledged_receipts_survive_kill_9(tmp_path, acks_before_kill):
    db = tmp_path / "n.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    acked = 0
    deadline = time.monotonic() + 60
    try:
        while acked < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: the writer never pauses between receipts
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert acked >= acks_before_kill
    with Store(db, readonly=True) as store:
        assert store.integrity_ok()
        (ag_id,) = store.agreement_ids()
        chain = store.load_chain(ag_id)
        assert len(chain.receipts) >= acked
    from p2p.envelope import signed_from_wire
    from p2p.market_records import Agreement
    from p2p.receipt_records import Receipt

    agreement = signed_from_wire(chain.agreement, Agreement)
    report = verify_chain(agreement, [signed_from_wire(r, Receipt) for r in chain.receipts])
    assert report.ok and report.last_seq >= acked
    assert make_chain(key_from_label("provider"), key_from_label("buyer"), 1).agreement.record_id == ag_id


def test_a_batch_commits_together_and_a_refused_receipt_fails_alone(tmp_path, evidence, provider_key, buyer_key):
    from dataclasses import replace

    other = make_chain(key_from_label("p2"), key_from_label("b2"), 3, nonce=b"\x02" * 16)
    with Store(tmp_path / "n.db") as store:
        for ev in (evidence, other):
            store.put_agreement(ev.agreement)
        store.append_receipt(evidence.receipts[0])
        forged = resign(replace(evidence.receipts[0].record, issued_at_ms=1), provider_key, buyer_key)
        batch = [evidence.receipts[1], forged, *other.receipts]
        results = store.append_receipts(batch)
        assert [r is None for r in results] == [True, False, True, True, True]
        assert "different receipt" in str(results[1])
        assert store.load_chain(other.agreement.record_id).receipts == other.stored().receipts
        assert store.load_chain(evidence.agreement.record_id).receipts == evidence.stored().receipts[:2]


async def test_concurrent_appends_share_commits_and_each_caller_hears_its_own_outcome(tmp_path, evidence,
                                                                                      provider_key, buyer_key):
    from dataclasses import replace

    import trio

    from settlement.astore import open_store

    chains = [make_chain(key_from_label(f"p{i}"), key_from_label(f"b{i}"), 3, nonce=bytes([i]) * 16)
              for i in range(20)]
    async with open_store(tmp_path / "n.db") as store:
        for ev in chains:
            await store.put_agreement(ev.agreement)
        await store.append_receipt(chains[0].receipts[0])
        forged = resign(replace(chains[0].receipts[0].record, issued_at_ms=1), key_from_label("p0"),
                        key_from_label("b0"))
        outcomes: dict[int, str] = {}

        async def append(i: int, signed) -> None:
            try:
                await store.append_receipt(signed)
                outcomes[i] = "ok"
            except StoreError as exc:
                outcomes[i] = str(exc)

        before = store.commits
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, -1, forged)
            for i, ev in enumerate(chains):
                for r in ev.receipts[1:] if i == 0 else ev.receipts:
                    nursery.start_soon(append, i * 10 + r.record.seq, r)
        assert "different receipt" in outcomes.pop(-1)
        assert set(outcomes.values()) == {"ok"} and len(outcomes) == 59
        assert store.commits - before < 10  # 60 receipts, a handful of transactions
        for ev in chains:
            assert (await store.load_chain(ev.agreement.record_id)).receipts == ev.stored().receipts
