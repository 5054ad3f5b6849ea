"""Settlement statements (pure): turn verified chains into who owes whom.

An entry per agreement carries what the evidence supports: the amount of the last countersigned
receipt (or of an accepted unsigned final), never a pending claim. Agreements with findings are kept
in the statement with their count of findings, so a payment rail can hold them back.
"""

from __future__ import annotations

from collections.abc import Iterable

from settlement.chain import ChainReport
from settlement.records import Statement, StatementEntry


def build_statement(reports: Iterable[ChainReport], auditor: bytes, now_ms: int) -> Statement:
    entries = tuple(
        StatementEntry(agreement_id=r.agreement_id, payer=r.buyer, payee=r.provider, amount_micros=r.amount_micros,
                       billed_ms=r.billed_ms, last_seq=r.last_seq, last_receipt_id=r.last_receipt_id,
                       state=r.state[:256], findings=len(r.findings))
        for r in sorted(reports, key=lambda r: r.agreement_id))
    return Statement(auditor=auditor, created_at_ms=now_ms, entries=entries)


def net_balances(statement: Statement, *, include_disputed: bool = False) -> dict[tuple[bytes, bytes], int]:
    """(payer, payee) -> micro-credits, over entries without findings unless told otherwise."""
    out: dict[tuple[bytes, bytes], int] = {}
    for e in statement.entries:
        if e.findings and not include_disputed:
            continue
        if e.amount_micros:
            out[(e.payer, e.payee)] = out.get((e.payer, e.payee), 0) + e.amount_micros
    return out
