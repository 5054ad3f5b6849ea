"""``suanli export``, ``suanli audit`` and ``suanli settle``: evidence out of a node, verified offline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from node.cli import EXIT_FINDINGS, EXIT_OK
from node.paths import default_key_path
from p2p.errors import UnusableInputError
from p2p.identity import load_key, peer_id_from_public, write_atomically
from settlement.audit import ChainAudit, audit, read_inputs
from settlement.bundle import encode_bundle
from settlement.store import Store
from settlement.verify_statement import read_statement, statement_problems


def _check_out(args: argparse.Namespace) -> None:
    """An existing --out is kept unless --force: evidence and statements are not overwritten by a typo."""
    out = Path(args.out)
    if not getattr(args, "force", False) and (out.exists() or out.is_symlink()):
        raise UnusableInputError(f"{out} exists: give --force to replace it", path=str(out))


def cmd_export(args: argparse.Namespace) -> int:
    _check_out(args)
    with Store(args.db, readonly=True) as store:
        if args.agreement:
            matches = store.find_agreements(args.agreement)
            if not matches:
                raise UnusableInputError(f"{args.db}: no agreement with id {args.agreement}")
            if len(matches) > 1:
                raise UnusableInputError(f"{args.db}: agreement id prefix {args.agreement} is ambiguous "
                                         f"({len(matches)} agreements); give more digits")
            ids = matches
        else:
            ids = store.agreement_ids()
        chains = [store.load_chain(a) for a in ids]
    write_atomically(Path(args.out), encode_bundle(chains))  # 0600: it holds the buyer's --env values (L3)
    receipts = sum(len(c.receipts) for c in chains)
    print(f"wrote {args.out}: {len(chains)} agreement(s), {receipts} receipt(s)")
    return EXIT_OK


def _peer(public: bytes) -> str:
    return peer_id_from_public(public) if any(public) else "?"


def audit_json(result: ChainAudit) -> dict[str, Any]:
    r = result.report
    return {
        "agreement_id": r.agreement_id.hex(), "provider": _peer(r.provider), "buyer": _peer(r.buyer),
        "state": r.state, "billed_ms": r.billed_ms, "amount_micros": r.amount_micros,
        "price_micros_per_s": r.price_micros_per_s, "receipts": r.receipts, "pending": r.pending,
        "last_seq": r.last_seq, "sources": result.sources, "ok": r.ok,
        # Never part of amount_micros (settlement.chain): what the buyer did not countersign.
        "unsigned_claim": None if r.unsigned_receipt_id is None else {
            "seq": r.unsigned_seq, "state": r.unsigned_state, "claimed_micros": r.unsigned_claim_micros,
            "owed_micros": r.unsigned_owed_micros, "owed_ms": r.unsigned_owed_ms},
        "findings": [{"rule": f.rule, "seq": f.seq, "detail": f.detail,
                      "receipt_id": f.receipt_id.hex() if f.receipt_id else None} for f in r.findings],
    }


def _print_text(results: list[ChainAudit]) -> None:
    for result in results:
        r = result.report
        print(f"agreement {r.agreement_id.hex()[:16]}  provider {_peer(r.provider)}  buyer {_peer(r.buyer)}")
        print(f"  state {r.state}  billed {r.billed_ms / 1000:.3f} s  amount {r.amount_micros} micro-credits  "
              f"receipts {r.receipts} (pending {r.pending})  from {', '.join(result.sources)}")
        if r.unsigned_receipt_id is not None:
            print(f"  unsigned claim (not co-signed, apart from the amount above): receipt {r.unsigned_seq} "
                  f"({r.unsigned_state}) claims {r.unsigned_claim_micros} more; owed at most "
                  f"{r.unsigned_owed_micros} micro-credits ({r.unsigned_owed_ms / 1000:.3f} s)")
        if r.ok:
            print("  ok")
        for finding in r.findings:
            print(f"  FINDING {finding.describe()}")
    findings = sum(len(r.report.findings) for r in results)
    verdict = "ok" if findings == 0 else f"{findings} finding(s)"
    print(f"audited {len(results)} agreement(s): {verdict}")


def _run_audit(args: argparse.Namespace, paths: list[str] | None = None) -> list[ChainAudit]:
    if args.jobs < 1:
        raise UnusableInputError("--jobs must be at least 1")
    return audit(read_inputs(args.paths if paths is None else paths), jobs=args.jobs)


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0/1 on the evidence's findings; with statements among the inputs, 0/1 on whether every
    statement verifies against the audit of the rest (settlement.verify_statement)."""
    statements = [(p, s) for p, s in ((p, read_statement(Path(p))) for p in args.paths) if s is not None]
    evidence = [p for p in args.paths if p not in {p for p, _ in statements}]
    if statements and not evidence:
        raise UnusableInputError("a statement is verified against the bundles or databases it was made from: "
                                 "give them too")
    results = _run_audit(args, evidence)
    findings = sum(len(r.report.findings) for r in results)
    checked = [(p, s, statement_problems(s, (r.report for r in results))) for p, s in statements]
    if args.json:
        doc: dict[str, Any] = {"ok": findings == 0, "findings": findings,
                               "agreements": [audit_json(r) for r in results]}
        if checked:
            doc["statements"] = [{"path": str(p), "statement_id": s.record_id.hex(),
                                  "auditor": peer_id_from_public(s.record.auditor), "entries": len(s.record.entries),
                                  "ok": not problems, "problems": problems} for p, s, problems in checked]
        print(json.dumps(doc, indent=1))
    else:
        _print_text(results)
        for p, s, problems in checked:
            print(f"statement {s.record_id.hex()[:16]} ({p}) by {peer_id_from_public(s.record.auditor)}: "
                  f"{len(s.record.entries)} entries, " + ("each equals the audit of the evidence" if not problems
                                                          else f"{len(problems)} problem(s)"))
            for problem in problems:
                print(f"  PROBLEM {problem}")
    if checked:
        return EXIT_OK if not any(problems for _, _, problems in checked) else EXIT_FINDINGS
    return EXIT_OK if findings == 0 else EXIT_FINDINGS


def cmd_settle(args: argparse.Namespace) -> int:
    from p2p.envelope import sign_record
    from settlement.statement import build_statement, net_balances

    _check_out(args)
    key = load_key(args.key or default_key_path())
    results = _run_audit(args)
    statement = build_statement((r.report for r in results), key.public, time.time_ns() // 1_000_000)
    signed = sign_record(statement, key)
    write_atomically(Path(args.out), signed.to_bytes())
    balances = net_balances(statement)
    claims = net_balances(statement, unsigned=True)
    findings = sum(e.findings for e in statement.entries)
    disputed = len({e.agreement_id for e in statement.entries if e.findings})
    agreements = len({e.agreement_id for e in statement.entries})
    if args.json:
        print(json.dumps({
            "statement": args.out, "statement_id": signed.record_id.hex(), "auditor": key.peer_id,
            "agreements": agreements, "disputed": disputed,
            "balances": [{"payer": _peer(p), "payee": _peer(q), "amount_micros": a}
                         for (p, q), a in sorted(balances.items())],
            "unsigned_claims": [{"payer": _peer(p), "payee": _peer(q), "owed_micros": a}
                                for (p, q), a in sorted(claims.items())]}, indent=1))
    else:
        for (payer, payee), amount in sorted(balances.items()):
            print(f"{_peer(payer)} owes {_peer(payee)} {amount} micro-credits (co-signed)")
        for (payer, payee), amount in sorted(claims.items()):
            print(f"{_peer(payee)} claims {amount} micro-credits from {_peer(payer)} (not countersigned; apart)")
        print(f"statement {signed.record_id.hex()[:16]} signed by {key.peer_id}: {agreements} "
              f"agreement(s), {disputed} disputed (held back) -> {args.out}")
    return EXIT_OK if findings == 0 else EXIT_FINDINGS
