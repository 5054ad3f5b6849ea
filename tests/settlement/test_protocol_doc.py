"""docs/PROTOCOL.md against the code: every finding is a named table row of §5, the vectors' field values
are the bodies', and each negative vector gives exactly its one finding (issue 16)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from p2p.codec import unpack
from p2p.envelope import signed_from_wire
from p2p.receipt_records import Statement
from settlement.audit import ChainJob, audit_chain
from settlement.testing import NEGATIVE, key_from_label, make_chain, negative_vectors, vector_fields
from settlement.verify_statement import statement_problems

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text()


def _finding_names() -> set[str]:
    names = set()
    for path in (ROOT / "settlement").glob("*.py"):
        names |= set(re.findall(r'(?:Finding\(|bad\()\s*"([a-z_]+)"', path.read_text()))
    return names


def test_every_finding_the_audit_can_report_is_a_named_table_row():
    section = DOC[DOC.index("## 5. Receipt chains"):DOC.index("## 6. Bundles")]
    rows = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    names = _finding_names()
    assert len(names) > 20, names
    missing = sorted(n for n in names if f"`{n}`" not in rows)
    assert not missing, f"findings without a table row in PROTOCOL.md §5: {missing}"


def test_the_vectors_field_values_are_in_the_doc():
    assert f"```text\n{vector_fields()}\n```" in DOC


def _bundle_with(name: str, envelope: bytes) -> ChainJob:
    ev = make_chain(key_from_label("provider"), key_from_label("buyer"), 2)
    stored = ev.stored()
    field, env = NEGATIVE[name][1], unpack(envelope, 1 << 20)
    stored = replace(stored, receipts=[stored.receipts[0], env]) if field == "receipts" else \
        replace(stored, **{field: env})
    return ChainJob(ev.agreement.record_id, agreements=[stored.agreement], offer=stored.offer,
                    proposal=stored.proposal, receipts=[stored.receipts], sources=["vectors"])


def test_each_negative_vector_is_in_the_doc_and_gives_exactly_its_finding():
    found = dict(re.findall(r"^(negative\.[a-z]+): ([0-9a-f]+)$", DOC, flags=re.M))
    vectors = negative_vectors()
    assert set(vectors) == set(NEGATIVE) == {f"negative.{t}" for t in
                                             ("offer", "proposal", "agreement", "receipt", "statement")}
    for name, envelope in vectors.items():
        assert found.get(name) == envelope.hex(), f"docs/PROTOCOL.md {name} is missing or stale"
        expected = NEGATIVE[name][2]
        if name == "negative.statement":
            ev = make_chain(key_from_label("provider"), key_from_label("buyer"), 2)
            job = ChainJob(ev.agreement.record_id, agreements=[ev.agreement.to_wire()], offer=ev.offer.to_wire(),
                           proposal=ev.proposal.to_wire(), receipts=[ev.stored().receipts], sources=["vectors"])
            statement = signed_from_wire(unpack(envelope, 1 << 20), Statement, verify=False)
            problems = statement_problems(statement, [audit_chain(job).report])
            assert len(problems) == 2 and all(p.startswith(("entry not given", "entry the evidence")) for p in problems)
            assert expected in problems[0]
            continue
        report = audit_chain(_bundle_with(name, envelope)).report
        assert [f.rule for f in report.findings] == [expected], (name, report.findings)
