"""Verify a settlement statement against the evidence it was made from (``suanli audit STATEMENT PATHS...``).

Rule 1: a statement verifies when its auditor's signature holds and its entries are exactly, as a
multiset, the entries settlement.statement builds from the audit of the evidence given (with the
statement's own auditor and time): every amount, state, last receipt and count of findings. An entry
the evidence does not give, or one it gives that the statement lacks, is named.
Rule 2: a statement file is recognised by its first bytes (a canonical signed envelope, ``82 a4 "body"``;
a bundle starts ``83``, a database ``SQLite format 3``); a file that starts so but is not a well-formed
Statement envelope within its size limit is unusable (exit 2). A signature that does not verify is a
problem of the statement (exit 1), not an unusable file.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from p2p.codec import unpack_canonical
from p2p.envelope import Signed, signed_from_wire
from p2p.errors import CodecError, SignatureError, UnusableInputError
from p2p.receipt_records import Statement, StatementEntry
from settlement.rules import ChainReport
from settlement.statement import build_statement

STATEMENT_HEAD = b"\x82\xa4body"
MAX_STATEMENT_FILE_BYTES = Statement.MAX_BYTES + 1024  # the body plus its envelope (one signature)


def read_statement(path: Path) -> Signed[Statement] | None:
    """The statement in ``path``, its signature not yet checked; None when the file is not one (Rule 2)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # the bundle reader says what is wrong with it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or os.read(fd, len(STATEMENT_HEAD)) != STATEMENT_HEAD:
            return None
        if st.st_size > MAX_STATEMENT_FILE_BYTES:
            raise UnusableInputError(f"{path}: a statement larger than {MAX_STATEMENT_FILE_BYTES} bytes",
                                     path=str(path))
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, MAX_STATEMENT_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return signed_from_wire(unpack_canonical(data, MAX_STATEMENT_FILE_BYTES), Statement, verify=False)
    except (CodecError, SignatureError) as exc:
        raise UnusableInputError(f"{path}: not a usable Suanli statement ({exc})", path=str(path)) from exc


def _describe(e: StatementEntry) -> str:
    return (f"agreement {e.agreement_id.hex()[:16]} {e.state} {e.amount_micros} micro-credits, "
            f"{e.billed_ms} ms, seq {e.last_seq}, {e.findings} finding(s)")


def statement_problems(signed: Signed[Statement], reports: Iterable[ChainReport]) -> list[str]:
    """Rule 1: what keeps ``signed`` from being the statement of this evidence (empty: it verifies)."""
    problems = []
    try:
        signed.verify()
    except SignatureError:
        problems.append("the auditor's signature does not verify")
    s = signed.record
    expected = Counter(build_statement(reports, s.auditor, s.created_at_ms).entries)
    given = Counter(s.entries)
    problems += [f"entry not given by the evidence: {_describe(e)}" for e in sorted(
        (given - expected).elements(), key=lambda e: (e.agreement_id, e.state))]
    problems += [f"entry the evidence gives is missing: {_describe(e)}" for e in sorted(
        (expected - given).elements(), key=lambda e: (e.agreement_id, e.state))]
    return problems
