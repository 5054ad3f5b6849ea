"""Scenarios on a ``netlab.cluster.Cluster`` (issue 21), shared by tests/lab/test_cluster.py and bench/cluster.py.

Each scenario drives the cluster, then returns a ``Report``: figures (offer propagation, find latency,
jobs attempted / succeeded / failed with reasons, reconvergence after a heal, RSS per node) and every
invariant's verdict (netlab.cluster_checks). A scenario never relaxes a check to pass: the caller
asserts on the verdicts (the test) or prints them (the bench).

Rule 1: every wait is bounded; a job is given its ``--max-duration`` plus ``JOB_MARGIN_S``.
Rule 2: propagation counts only offers created after the watcher joined (an older offer's delay
measures the watcher's start, not the network).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from netlab import cluster_checks as checks
from netlab.cluster import Cluster, Node
from netlab.cluster_proc import Proc, ProcError

JOB_MARGIN_S = 60.0
RECONVERGE_POLL_S = 1.0


@dataclass
class Report:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    verdicts: list[checks.Verdict] = field(default_factory=list)
    jobs: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def broken(self) -> list[str]:
        return [v.line() for v in self.verdicts if not v.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.name, **self.figures, "jobs": dict(self.jobs),
                "invariants": checks.summary(self.verdicts)}


def build(cluster: Cluster, *, providers: int, agents: int, watchers: int, bootstraps: int = 3) -> None:
    for i in range(bootstraps):
        cluster.add_bootstrap(f"b{i}")
    for i in range(providers):
        cluster.add_provider(f"p{i}")
    for i in range(agents):
        cluster.add_agent(f"a{i}")
    for i in range(watchers):
        cluster.add_watcher(f"w{i}")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
    return {"n": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def propagation_ms(cluster: Cluster, since_wall_ms: int = 0,
                   exclude: tuple[int, int] | None = None) -> list[float]:
    """Rule 2: (arrival - creation) of every offer a watcher heard, created after it joined and after ``since``
    (and outside ``exclude``, a wall-ms window such as a partition, when one side cannot hear the other)."""
    out: list[float] = []
    for w in cluster.of_role("watcher"):
        if w.proc is None:
            continue
        docs = w.proc.json_lines()
        ready = next((at for at, d in docs if d.get("event") == "ready"), None)
        if ready is None:
            continue
        joined_ms = int((time.time() - (time.monotonic() - ready)) * 1000)
        out += [d["at_ms"] - d["created_ms"] for _, d in docs
                if d.get("event") == "offer" and d["created_ms"] >= max(joined_ms, since_wall_ms)
                and not (exclude and exclude[0] <= d["created_ms"] <= exclude[1])]
    return out


def find_ms(cluster: Cluster, rounds: int = 3) -> list[float]:
    out = []
    for _ in range(rounds):
        for w in cluster.of_role("watcher"):
            if w.alive():
                out.append(float(cluster.watcher_command(w, {"op": "find"}, "find", 40)["ms"]))
    return out


def rss_mib(cluster: Cluster) -> dict[str, float | None]:
    values = [s["rss_kib"] / 1024 for n in cluster.nodes.values() if n.proc and n.alive()
              for s in [checks.proc_stats(n.proc.pid)] if s]
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def job_result(job: Proc, timeout_s: float) -> tuple[bool, str]:
    """(succeeded, reason): the run's JSON summary, or its exit code when it printed none."""
    try:
        code = job.wait_exit(timeout_s)
    except ProcError:
        job.kill()
        return False, "no result within its time limit"
    if any("Traceback" in line for line in job.stderr):
        return False, "traceback reached the user"
    docs = [d for _, d in job.json_lines() if "ok" in d]
    if not docs:
        return False, f"exit {code}, no summary"
    doc = docs[-1]
    if doc.get("ok") and code == 0:
        return True, "completed"
    return False, str(doc.get("reason") or doc.get("error") or f"exit {code}")[:160]


def current_seqs(cluster: Cluster) -> dict[str, int]:
    """Each live provider's current offer seq, as its daemon reports it."""
    out = {}
    for p in cluster.of_role("provider"):
        if p.alive():
            status = cluster.status(p)
            if status and status.get("offer"):
                out[status["peer_id"]] = int(status["offer"]["seq"])
    return out


def reconverge_s(cluster: Cluster, timeout_s: float) -> float | None:
    """Seconds until every watcher's discovery (gossip + DHT + direct query, as a buyer's) holds every live
    provider's current offer; None if not within ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        want = current_seqs(cluster)
        seen_all = True
        for w in cluster.of_role("watcher"):
            got = cluster.watcher_command(w, {"op": "collect", "wait_s": 2}, "collect", 30)
            have = {o["provider"]: o["seq"] for o in got["offers"]}
            if any(have.get(peer, -1) < seq for peer, seq in want.items()):
                seen_all = False
                break
        if seen_all:
            return round(time.monotonic() - t0, 1)
        time.sleep(RECONVERGE_POLL_S)
    return None


def invariants(cluster: Cluster, report: Report, stats: dict[str, dict[str, int]] | None = None) -> None:
    providers = cluster.of_role("provider")
    buyers = cluster.of_role("agent")
    pdbs, bdbs = [p.db for p in providers], [a.db for a in buyers]
    report.verdicts += [checks.audits_clean(pdbs + bdbs), checks.chains_agree(pdbs, bdbs),
                        checks.billing_capped(pdbs, bdbs),
                        checks.capacity_not_oversold([(p.db, 1000, 512) for p in providers]),
                        checks.stray_containers(cluster.root, running_agreements(cluster))]
    if stats is None:
        stats = {n.name: s for n in cluster.nodes.values() if n.proc and n.alive()
                 for s in [checks.proc_stats(n.proc.pid)] if s}
    report.verdicts.append(checks.processes_bounded(stats))


def running_agreements(cluster: Cluster) -> set[str]:
    out: set[str] = set()
    for p in cluster.of_role("provider"):
        if p.alive():
            status = cluster.status(p) or {}
            out |= {j["agreement_id"] for j in status.get("jobs", [])}
    return out


def wait_for_job_on(cluster: Cluster, timeout_s: float) -> tuple[Node, str]:
    """The first provider that reports a running job: (provider, agreement id hex)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in cluster.of_role("provider"):
            if p.alive():
                jobs = (cluster.status(p) or {}).get("jobs", [])
                if jobs:
                    return p, jobs[0]["agreement_id"]
        time.sleep(0.5)
    raise ProcError(f"no provider reported a running job within {timeout_s:.0f} s")


def run_jobs(cluster: Cluster, report: Report, agents: list[Node], seconds: float,
             max_duration_s: int = 120) -> list[tuple[bool, str]]:
    jobs = [cluster.run_job(a, seconds, max_duration_s=max_duration_s) for a in agents]
    return [collect(report, job, max_duration_s + JOB_MARGIN_S) for job in jobs]


def collect(report: Report, job: Proc, timeout_s: float) -> tuple[bool, str]:
    ok, reason = job_result(job, timeout_s)
    report.jobs["attempted"] += 1
    report.jobs["succeeded" if ok else f"failed: {reason}"] += 1
    return ok, reason


def describe(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=1, default=str)
