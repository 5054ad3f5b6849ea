"""Settlement statements (pure): turn verified chains into who owes whom.

Rule 1: an entry per agreement carries the *co-signed debt*: the amount of the last receipt the buyer
countersigned, never a pending claim.
Rule 2: an agreement whose provider claims more in receipts the buyer did not countersign gets a second
entry, of its own, for the *unsigned claim* (settlement.chain): its ``state`` starts with
``unsigned:``, its amount is what billing Rule 3 lets that claim be owed, its ``last_seq`` and
``last_receipt_id`` name the unsigned receipt. The two are never added together: ``net_balances``
sums one kind or the other, and a payment rail decides what to do with claims nobody countersigned.
Rule 3: agreements with findings are kept with their count of findings, so a payment rail can hold
them back.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2p.receipt_records import Statement, StatementEntry
from settlement.chain import ChainReport

UNSIGNED = "unsigned:"


def is_unsigned_claim(entry: StatementEntry) -> bool:
    return entry.state.startswith(UNSIGNED)


def _entries(r: ChainReport) -> list[StatementEntry]:
    out = [StatementEntry(agreement_id=r.agreement_id, payer=r.buyer, payee=r.provider, amount_micros=r.amount_micros,
                          billed_ms=r.billed_ms, last_seq=r.last_seq, last_receipt_id=r.last_receipt_id,
                          state=r.state[:256], findings=len(r.findings))]
    if r.unsigned_receipt_id is not None:
        out.append(StatementEntry(
            agreement_id=r.agreement_id, payer=r.buyer, payee=r.provider, amount_micros=r.unsigned_owed_micros,
            billed_ms=r.unsigned_owed_ms, last_seq=r.unsigned_seq, last_receipt_id=r.unsigned_receipt_id,
            state=(UNSIGNED + r.unsigned_state)[:256], findings=len(r.findings)))
    return out


def build_statement(reports: Iterable[ChainReport], auditor: bytes, now_ms: int) -> Statement:
    entries = tuple(e for r in sorted(reports, key=lambda r: r.agreement_id) for e in _entries(r))
    return Statement(auditor=auditor, created_at_ms=now_ms, entries=entries)


def net_balances(statement: Statement, *, include_disputed: bool = False,
                 unsigned: bool = False) -> dict[tuple[bytes, bytes], int]:
    """(payer, payee) -> micro-credits of co-signed debt (or, with ``unsigned``, of unsigned claims
    only: Rule 2), over entries without findings unless told otherwise."""
    out: dict[tuple[bytes, bytes], int] = {}
    for e in statement.entries:
        if (e.findings and not include_disputed) or is_unsigned_claim(e) != unsigned:
            continue
        if e.amount_micros:
            out[(e.payer, e.payee)] = out.get((e.payer, e.payee), 0) + e.amount_micros
    return out
