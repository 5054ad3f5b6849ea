"""``suanli jobs``, ``suanli logs`` and ``suanli receipts``: a buyer's history, like ``docker ps -a`` and
``docker logs``, read from its own database (``<data dir>/buyer.db``, read-only) and stored logs
(node.joblog).

Rule 1: figures come from the signed records only: billed seconds and amount are the last receipt the
buyer countersigned (what it owes); a receipt it did not countersign is shown apart, as pending.
Rule 2: an agreement id may be any unique hex prefix (``settlement.store.Store.find_agreements``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from p2p.errors import UnusableInputError

BUYER_DB = "buyer.db"


def _home(args: argparse.Namespace) -> Path:
    from node.paths import data_dir

    return data_dir(getattr(args, "data_dir", None))


def _db(home: Path) -> Path:
    db = home / BUYER_DB
    if not db.exists():
        raise UnusableInputError(f"no buyer database at {db}: no job was bought from this data directory "
                                 "(give --data-dir DIR)", path=str(db))
    return db


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _peer(public: bytes) -> str:
    from p2p.identity import peer_id_from_public

    return peer_id_from_public(public)


def resolve(store: Any, prefix: str) -> bytes:
    """Rule 2: the one agreement whose id starts with ``prefix``; UnusableInputError otherwise."""
    text = prefix.strip().lower()
    if not text or any(c not in "0123456789abcdef" for c in text):
        raise UnusableInputError(f"{prefix!r} is not an agreement id: give its hex digits (a unique prefix)")
    matches = store.find_agreements(text)
    if not matches:
        raise UnusableInputError(f"{store.path}: no agreement with id {prefix} (suanli jobs lists them)")
    if len(matches) > 1:
        raise UnusableInputError(f"{store.path}: agreement id prefix {prefix} is ambiguous ({len(matches)} "
                                 "agreements); give more digits")
    return matches[0]  # type: ignore[no-any-return]


def receipt_rows(chain: Any) -> list[dict[str, Any]]:
    from p2p.receipt_records import Receipt

    rows = []
    for env in chain.receipts:
        r = Receipt.decode(env["body"])
        rows.append({"seq": r.seq, "issued_at_ms": r.issued_at_ms, "metered_ms": r.metered_ms,
                     "amount_micros": r.amount_micros, "state": r.state, "reason": r.reason,
                     "exit_code": r.exit_code, "cpu_core_ms": r.usage.cpu_core_ms,
                     "mem_peak_bytes": r.usage.mem_peak_bytes, "gpu_ms": r.usage.gpu_ms,
                     "cosigned": len(env["sigs"]) >= 2})
    return rows


def job_row(agreement_id: bytes, chain: Any) -> dict[str, Any]:
    """One agreement as ``suanli jobs`` shows it (Rule 1)."""
    from p2p.market_records import Agreement

    ag = Agreement.decode(chain.agreement["body"])
    receipts = receipt_rows(chain)
    signed = [r for r in receipts if r["cosigned"]]
    last = receipts[-1] if receipts else None
    final = last if last is not None and last["state"] == "final" else None
    return {
        "agreement_id": agreement_id.hex(), "provider": _peer(ag.provider), "image": ag.job.image,
        "command": list(ag.job.command), "started_at_ms": ag.created_at_ms,
        "price_micros_per_s": ag.price_micros_per_s,
        "billed_ms": signed[-1]["metered_ms"] if signed else 0,
        "amount_micros": signed[-1]["amount_micros"] if signed else 0,
        "pending_micros": (last["amount_micros"] - (signed[-1]["amount_micros"] if signed else 0))
        if last is not None and not last["cosigned"] else 0,
        "exit_code": final["exit_code"] if final else None, "reason": final["reason"] if final else None,
        "state": "ended" if final else ("running or cut off" if receipts else "no receipt"),
        "receipts": len(receipts),
    }


def cmd_jobs(args: argparse.Namespace) -> int:
    from settlement.store import Store

    with Store(_db(_home(args)), readonly=True) as store:
        rows = [job_row(a, store.load_chain(a)) for a in store.agreement_ids()]
    if args.json:
        print(json.dumps({"jobs": rows}))
        return 0
    print(f"{'AGREEMENT':<16}  {'PROVIDER':<14}  {'IMAGE':<19}  {'STARTED':<19}  {'BILLED':>9}  "
          f"{'AMOUNT':>10}  {'EXIT':>4}  REASON")
    for r in rows:
        code = "-" if r["exit_code"] is None else str(r["exit_code"])
        print(f"{r['agreement_id'][:16]}  {r['provider'][-14:]:<14}  {r['image'][:19]:<19}  "
              f"{_when(r['started_at_ms'])}  {r['billed_ms'] / 1000:>8.3f}s  {r['amount_micros']:>10}  "
              f"{code:>4}  {r['reason'] or r['state']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from node.joblog import log_path, read_records
    from settlement.store import Store

    home = _home(args)
    with Store(_db(home), readonly=True) as store:
        agreement_id = resolve(store, args.agreement)
    path = log_path(home, agreement_id)
    if not path.exists():
        print(f"suanli: no output stored for agreement {agreement_id.hex()[:16]} (the job printed nothing, "
              "or it ran before this suanli kept logs)", file=sys.stderr)
        return 0
    for stream, data in read_records(path):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data + b"\n")
    sys.stdout.flush()
    return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    from node.commands.evidence import audit_json
    from settlement.audit import audit_chain, read_inputs
    from settlement.store import Store

    db = _db(_home(args))
    with Store(db, readonly=True) as store:
        agreement_id = resolve(store, args.agreement)
        chain = store.load_chain(agreement_id)
    rows = receipt_rows(chain)
    jobs = [j for j in read_inputs([db]) if j.agreement_id == agreement_id]
    verdict = audit_json(audit_chain(jobs[0])) if jobs else None
    if args.json:
        print(json.dumps({"agreement_id": agreement_id.hex(), "receipts": rows, "audit": verdict}))
        return 0
    print(f"agreement {agreement_id.hex()}")
    print(f"{'SEQ':>4}  {'ISSUED':<19}  {'METERED':>9}  {'AMOUNT':>10}  {'STATE':<7}  CO-SIGNED  REASON")
    for r in rows:
        print(f"{r['seq']:>4}  {_when(r['issued_at_ms'])}  {r['metered_ms'] / 1000:>8.3f}s  "
              f"{r['amount_micros']:>10}  {r['state']:<7}  {'yes' if r['cosigned'] else 'no':<9}  "
              f"{r['reason'] or ''}")
    if verdict is not None:
        problems = "; ".join(f"{f['rule']}: {f['detail']}" for f in verdict["findings"])
        print(f"audit: {'ok' if verdict['ok'] else 'FINDINGS: ' + problems}")
    return 0
