"""The cluster's invariants, checked by code (issue 21). Each check returns a ``Verdict``: ok, and why not.

1. ``audits_clean``: ``suanli audit`` of every database together finds nothing.
2. ``chains_agree``: a receipt co-signed on one side is in the other side's chain with the same id.
   Allowed after a crash (PROTOCOL.md): the provider's copy may lack the buyer's countersignature of its
   last receipts (it died before storing it), and a restarted provider's closing receipt (a new seq)
   exists on its side only. A missing co-signed receipt on the buyer's side, or two different receipts
   at one seq, is never allowed.
3. ``billing_capped``: what a provider claims of an agreement (its last receipt's amount) is at most the
   buyer's highest countersigned amount plus the agreement's ``exposure_cap_micros``.
4. ``capacity_not_oversold``: at no instant do a provider's agreements that overlap in time (from the
   agreement's creation to its last receipt) ask for more CPU or memory than its offer's capacity.
5. ``no_stray_containers``: no container or volume of this cluster's providers is left that is not a
   running job of a live provider daemon.
6. ``processes_bounded``: per node, threads, open fds and RSS from /proc within the stated bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.market_records import Agreement
from p2p.receipt_records import Receipt
from settlement.store import Store

MAX_THREADS = 64
MAX_FDS = 512
MAX_RSS_MIB = 400


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'BROKEN'}{(' (' + self.detail + ')') if self.detail else ''}"


def audits_clean(dbs: list[Path]) -> Verdict:
    dbs = [db for db in dbs if db.exists()]
    if not dbs:
        return Verdict("audit", True, "no databases")
    done = subprocess.run([sys.executable, "-m", "node.cli", "audit", "--json", *map(str, dbs)],
                          capture_output=True, text=True, timeout=300)
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        return Verdict("audit", False, f"no JSON (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    ok = done.returncode == 0 and bool(doc.get("ok")) and doc.get("findings") == 0
    return Verdict("audit", ok, f"{len(dbs)} databases, {doc.get('findings')} findings")


def _detail(head: str, problems: list[str]) -> str:
    return head + ("; " + "; ".join(problems[:5]) if problems else "")


def _chains(db: Path) -> dict[bytes, dict[int, tuple[bytes, bool, Receipt]]]:
    out: dict[bytes, dict[int, tuple[bytes, bool, Receipt]]] = {}
    with Store(db, readonly=True) as store:
        for ag_id, seq, rid, body, buyer_sig in store.conn.execute(
                "SELECT agreement_id, seq, id, body, buyer_sig FROM receipts"):
            out.setdefault(bytes(ag_id), {})[seq] = (bytes(rid), buyer_sig is not None, Receipt.decode(body))
    return out


def _agreements(db: Path) -> list[Agreement]:
    with Store(db, readonly=True) as store:
        return [Agreement.decode(body) for (body,) in store.conn.execute("SELECT body FROM agreements")]


def chains_agree(provider_dbs: list[Path], buyer_dbs: list[Path]) -> Verdict:
    providers = {db: _chains(db) for db in provider_dbs if db.exists()}
    buyers = {db: _chains(db) for db in buyer_dbs if db.exists()}
    by_agreement_p = {ag: (db, c) for db, chains in providers.items() for ag, c in chains.items()}
    problems: list[str] = []
    checked = 0
    for chains in buyers.values():
        for ag, bchain in chains.items():
            pdb_chain = by_agreement_p.get(ag)
            pchain = pdb_chain[1] if pdb_chain else {}
            for seq, (rid, cosigned, _) in bchain.items():
                checked += 1
                theirs = pchain.get(seq)
                if theirs is not None and theirs[0] != rid:
                    problems.append(f"{ag.hex()[:12]} seq {seq}: two receipts")
                elif cosigned and theirs is None:
                    problems.append(f"{ag.hex()[:12]} seq {seq}: co-signed at the buyer, absent at the provider")
    buyer_chains = {ag: c for chains in buyers.values() for ag, c in chains.items()}
    for ag, (_, pchain) in by_agreement_p.items():
        bchain = buyer_chains.get(ag, {})
        for seq, (rid, cosigned, _) in pchain.items():
            if cosigned and bchain.get(seq, (b"",))[0] != rid:
                problems.append(f"{ag.hex()[:12]} seq {seq}: co-signed at the provider, not in the buyer's chain")
    return Verdict("chains agree", not problems, _detail(f"{checked} buyer-side receipts", problems))


def billing_capped(provider_dbs: list[Path], buyer_dbs: list[Path]) -> Verdict:
    problems: list[str] = []
    agreements = 0
    for pdb in provider_dbs:
        if not pdb.exists():
            continue
        caps = {a_id: a for a_id, a in _agreement_map(pdb).items()}
        for ag, chain in _chains(pdb).items():
            agreements += 1
            claimed = chain[max(chain)][2].amount_micros
            cosigned = max((r.amount_micros for _, c, r in chain.values() if c), default=0)
            cap = caps[ag].terms.exposure_cap_micros if ag in caps else 0
            if claimed > cosigned + cap:
                problems.append(f"{ag.hex()[:12]}: claims {claimed} > {cosigned} co-signed + cap {cap}")
    return Verdict("billing capped", not problems, _detail(f"{agreements} agreements", problems))


def _agreement_map(db: Path) -> dict[bytes, Agreement]:
    with Store(db, readonly=True) as store:
        return {bytes(i): Agreement.decode(body) for i, body in store.conn.execute("SELECT id, body FROM agreements")}


def capacity_not_oversold(providers: list[tuple[Path, int, int]]) -> Verdict:
    """``providers``: (database, cpu_millis, memory_mib) offered."""
    problems: list[str] = []
    for db, cpu_millis, memory_mib in providers:
        if not db.exists():
            continue
        chains = _chains(db)
        spans = []
        for ag_id, ag in _agreement_map(db).items():
            chain = chains.get(ag_id, {})
            end = max((r.issued_at_ms for _, _, r in chain.values()), default=ag.created_at_ms)
            spans.append((ag.created_at_ms, end, ag.resources.cpu_millis, ag.resources.memory_mib))
        for start, _, _, _ in spans:
            live = [s for s in spans if s[0] <= start < max(s[1], s[0] + 1)]
            cpu, mem = sum(s[2] for s in live), sum(s[3] for s in live)
            if cpu > cpu_millis or mem > memory_mib:
                problems.append(f"{db.parent.name}: {cpu} millicores / {mem} MiB at once, of {cpu_millis} / "
                                f"{memory_mib}")
                break
    return Verdict("capacity not oversold", not problems, "; ".join(problems[:5]))


def stray_containers(root: Path, running_agreements: set[str]) -> Verdict:
    from sandbox.spec import LABEL_AGREEMENT, LABEL_OWNER

    fmt = "{{.ID}} " + f'{{{{.Label "{LABEL_OWNER}"}}}} {{{{.Label "{LABEL_AGREEMENT}"}}}}'
    out = subprocess.run(["docker", "ps", "-a", "--format", fmt], capture_output=True, text=True, timeout=30).stdout
    stray = []
    for line in out.splitlines():
        parts = line.split(" ")
        if len(parts) >= 3 and parts[1].startswith(str(root)) and parts[2] not in running_agreements:
            stray.append(f"{parts[0][:12]} (agreement {parts[2][:12]})")
    return Verdict("no stray containers", not stray, ", ".join(stray[:5]))


def proc_stats(pid: int) -> dict[str, int] | None:
    """threads, fds and RSS (KiB) of a live process, from /proc; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"threads": int(fields["Threads"]), "fds": fds, "rss_kib": int(fields.get("VmRSS", "0 kB").split()[0])}


def processes_bounded(stats: dict[str, dict[str, int]]) -> Verdict:
    bad = [f"{name}: {s}" for name, s in stats.items()
           if s["threads"] > MAX_THREADS or s["fds"] > MAX_FDS or s["rss_kib"] > MAX_RSS_MIB * 1024]
    bounds = f"threads <= {MAX_THREADS}, fds <= {MAX_FDS}, RSS <= {MAX_RSS_MIB} MiB per node"
    return Verdict("processes bounded", not bad, bounds + ("; " + "; ".join(bad[:5]) if bad else ""))


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    return {v.name: {"ok": v.ok, "detail": v.detail} for v in verdicts}
