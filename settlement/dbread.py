"""A node database as audit evidence: its rows grouped by what their signed bodies say.

docs/PROTOCOL.md §6: only the bundle is an interchange format; ``suanli audit`` on a node database is a
convenience, and it reads a database under the same rule as a bundle: only signed bytes are trusted.
Rule 1: a database has no structure of its own. Receipts belong to the agreement their signed body
names, in the order of their signed ``seq``; the columns ``receipts.agreement_id``, ``receipts.seq``,
``receipts.id``, ``agreements.id`` (and the copies of the agreement's parties, offer, proposal and time
in ``agreements``) are an index, and each row whose columns disagree with its body gets one
``column_mismatch`` finding, in the chain its body names.
Rule 2: receipts whose agreement no row holds are kept apart (``agreement`` None), so that the audit
reports them (``no_agreement``) unless another input holds that agreement.
Rule 3: a row whose body does not decode is left to the audit to report (``malformed``), in the chain
its ``agreement_id`` column names; a cell holding text where a blob belongs is such a row, never an
exception (issue 17, item 10).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from p2p.errors import CodecError
from p2p.market_records import Agreement
from p2p.receipt_records import Receipt
from settlement.rules import Finding
from settlement.store import Store, _envelope

_NO_AGREEMENT = b""  # where a receipt goes whose body does not decode and whose column is no id either


@dataclass
class DatabaseChain:
    agreement_id: bytes
    agreement: dict[str, Any] | None  # None: no agreement row (Rule 2)
    offer: dict[str, Any] | None = None
    proposal: dict[str, Any] | None = None
    receipts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)


def _mismatch(what: str, names: list[str], seq: int | None = None, receipt_id: bytes | None = None) -> Finding:
    return Finding("column_mismatch", f"{what}: column(s) {', '.join(names)} disagree with the signed body",
                   seq, receipt_id)


def read_database(store: Store) -> list[DatabaseChain]:
    agreement_rows, receipt_rows = store.evidence_rows()
    chains: dict[bytes, DatabaseChain] = {}
    for id_col, provider, buyer, offer_id, proposal_id, created_at, body, psig, bsig in agreement_rows:
        if type(body) is not bytes:  # Rule 3: the audit reports the envelope malformed
            key = id_col if type(id_col) is bytes else b"\0" * 32
            chains.setdefault(key, DatabaseChain(key, _envelope(body, psig, bsig)))
            continue
        key = hashlib.sha256(body).digest()
        if key in chains:
            continue  # the same body twice: only an edited id column allows it, reported below
        chain = chains[key] = DatabaseChain(key, _envelope(body, psig, bsig))
        try:
            ag = Agreement.decode(body)
        except CodecError:
            continue
        wrong = [name for name, column, signed in (
            ("id", id_col, key), ("provider", provider, ag.provider), ("buyer", buyer, ag.buyer),
            ("offer_id", offer_id, ag.offer_id), ("proposal_id", proposal_id, ag.proposal_id),
            ("created_at_ms", created_at, ag.created_at_ms)) if column != signed or type(column) is not type(signed)]
        if wrong:
            chain.notes.append(_mismatch("agreements row", wrong))
        chain.offer = store.signed_row("offers", ag.offer_id)
        chain.proposal = store.signed_row("proposals", ag.proposal_id)

    placed: dict[bytes, list[tuple[int, dict[str, Any]]]] = {}
    for ag_col, seq_col, id_col, body, psig, bsig in receipt_rows:
        env = _envelope(body, psig, bsig)
        try:
            r = Receipt.decode(body) if type(body) is bytes else None
        except CodecError:
            r = None
        if r is None:  # Rule 3
            key = ag_col if type(ag_col) is bytes else _NO_AGREEMENT
            placed.setdefault(key, []).append((1 << 64, env))
            continue
        rid = hashlib.sha256(body).digest()
        wrong = [name for name, column, signed in (("agreement_id", ag_col, r.agreement_id), ("seq", seq_col, r.seq),
                                                   ("id", id_col, rid))
                 if column != signed or type(column) is not type(signed)]
        chain = chains.get(r.agreement_id)
        if chain is None:
            chain = chains[r.agreement_id] = DatabaseChain(r.agreement_id, None)
        if wrong:
            chain.notes.append(_mismatch("receipts row", wrong, r.seq, rid))
        placed.setdefault(r.agreement_id, []).append((r.seq, env))
    for key, rows in placed.items():
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = DatabaseChain(key, None)
        rows.sort(key=lambda row: row[0])  # Rule 1: in the order of the signed seq (stable)
        chain.receipts = [env for _, env in rows]
    return list(chains.values())
