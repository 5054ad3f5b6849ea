"""The fault scenarios of issue 21 on a built cluster: steady, partition, provider crash, bootstrap loss, churn.

Each returns a ``cluster_scenarios.Report``; its verdicts are the invariants (netlab.cluster_checks) plus
the scenario's own promises, each a ``Verdict`` too:

- partition: offers reconverge within ``reconverge_timeout_s`` of the heal; after the heal every agent's
  job succeeds;
- provider crash: every buyer whose provider died gets a result (a non-zero exit and one line, no
  traceback) within a bound; later jobs go to providers that are alive; each restarted provider closes
  the dead agreement with a ``provider_restart`` receipt and leaves no container of it;
- bootstrap loss: with 2 of 3 bootstrap hosts dead, a new node joins and a job still runs;
- churn: every lookup during the churn names at least one provider.
"""

from __future__ import annotations

import random
import time

from netlab.cluster import Cluster, Node
from netlab.cluster_checks import Verdict
from netlab.cluster_scenarios import (
    JOB_MARGIN_S,
    Report,
    collect,
    find_ms,
    invariants,
    percentiles,
    propagation_ms,
    reconverge_s,
    rss_mib,
    run_jobs,
    running_agreements,
)
from p2p.receipt_records import PROVIDER_RESTART
from settlement.store import Store

CLOSE_TIMEOUT_S = 30.0


def _start(cluster: Cluster, name: str) -> tuple[Report, int]:
    report = Report(name)
    report.figures["rss_start_mib"] = rss_mib(cluster)
    return report, time.time_ns() // 1_000_000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _finish(cluster: Cluster, report: Report, since_ms: int, find_rounds: int = 2,
            exclude: tuple[int, int] | None = None) -> Report:
    report.figures["propagation_ms"] = percentiles(propagation_ms(cluster, since_ms, exclude))
    report.figures["find_ms"] = percentiles(find_ms(cluster, find_rounds))
    report.figures["rss_end_mib"] = rss_mib(cluster)
    invariants(cluster, report)
    return report


def steady(cluster: Cluster, *, rounds: int = 2, job_s: float = 2) -> Report:
    report, since = _start(cluster, "steady")
    for _ in range(rounds):
        run_jobs(cluster, report, cluster.of_role("agent"), job_s)
    return _finish(cluster, report, since, find_rounds=3)


def _wait_running(cluster: Cluster, count: int, timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    running: set[str] = set()
    while time.monotonic() < deadline:
        running = running_agreements(cluster)
        if len(running) >= count:
            break
        time.sleep(0.5)
    return running


def partition(cluster: Cluster, *, cut_s: float, reconverge_timeout_s: float) -> Report:
    report, since = _start(cluster, "partition")
    boots, providers = cluster.bootstraps, cluster.of_role("provider")
    agents, watchers = cluster.of_role("agent"), cluster.of_role("watcher")
    side_b = [boots[-1], *providers[len(providers) // 2 + 1:], agents[-1], watchers[-1]]
    side_a = [n for n in cluster.nodes.values() if n not in side_b]
    long_jobs = [cluster.run_job(a, cut_s + 15, max_duration_s=int(cut_s) + 120) for a in agents]
    _wait_running(cluster, len(agents), 60)
    t_cut, cut_ms = time.monotonic(), _wall_ms()
    cluster.partition(side_a, side_b)
    try:
        during = run_jobs(cluster, report, agents, 2)  # each side buys on its own side
        report.figures["jobs_during_cut"] = [reason for _, reason in during]
        time.sleep(max(0.0, cut_s - (time.monotonic() - t_cut)))
    finally:
        cluster.heal()
    report.figures["cut_s"] = round(time.monotonic() - t_cut, 1)
    heal_ms = _wall_ms()
    took = reconverge_s(cluster, reconverge_timeout_s)
    report.figures["reconverge_s"] = took
    report.verdicts.append(Verdict("offers reconverge", took is not None,
                                   f"within {reconverge_timeout_s:g} s of the heal: {took} s"))
    report.figures["long_jobs"] = [collect(report, j, cut_s + 120 + JOB_MARGIN_S)[1] for j in long_jobs]
    report.figures["cut_offers_heard_after_heal_ms"] = percentiles(
        [heard - heal_ms for heard in _heard_after(cluster, cut_ms, heal_ms)])
    after = run_jobs(cluster, report, agents, 1)
    report.verdicts.append(Verdict("jobs after the heal", all(ok for ok, _ in after), str([r for _, r in after])))
    # offers made during the cut reach the far side only after the heal: reported above, not as propagation
    return _finish(cluster, report, since, exclude=(cut_ms, heal_ms))


def _heard_after(cluster: Cluster, cut_ms: int, heal_ms: int) -> list[int]:
    """Arrival times (wall ms) after the heal of offers created during the cut, at every watcher."""
    return [d["at_ms"] for w in cluster.of_role("watcher") if w.proc is not None for _, d in w.proc.json_lines()
            if d.get("event") == "offer" and cut_ms <= d["created_ms"] <= heal_ms and d["at_ms"] > heal_ms]


def provider_crash(cluster: Cluster, *, fraction: float, job_s: float = 40) -> Report:
    report, since = _start(cluster, "provider-crash")
    agents, providers = cluster.of_role("agent"), [p for p in cluster.of_role("provider") if p.alive()]
    victims_wanted = max(1, round(fraction * len(providers)))
    jobs = [cluster.run_job(a, job_s, max_duration_s=int(job_s) + 60) for a in agents]
    running = _wait_running(cluster, len(agents), 60)
    busy = [p for p in providers if _agreements_running(cluster, p) & running]
    victims = (busy + [p for p in providers if p not in busy])[:victims_wanted]
    dead_agreements = {p.name: _agreements_running(cluster, p) for p in victims}
    t_kill = time.monotonic()
    for p in victims:
        cluster.kill(p)
    results = []
    for job in jobs:
        ok, reason = collect(report, job, job_s + 60 + JOB_MARGIN_S)
        results.append((ok, reason, round(time.monotonic() - t_kill, 1)))
    report.figures["victims"] = [p.name for p in victims]
    report.figures["jobs_at_crash"] = [f"{r} after {s} s" for _, r, s in results]
    clear = all(ok or "traceback" not in reason for ok, reason, _ in results)
    report.verdicts.append(Verdict("buyers get a clear result", clear, str(report.figures["jobs_at_crash"])))
    victim_ids = {p.peer_id for p in victims}
    later = [cluster.run_job(a, 1) for a in agents]
    elsewhere = []
    for job in later:
        ok, reason = collect(report, job, 120 + JOB_MARGIN_S)
        provider = next((d.get("provider") for _, d in job.json_lines() if "provider" in d), None)
        elsewhere.append(ok and provider not in victim_ids)
    report.verdicts.append(Verdict("later jobs go elsewhere", all(elsewhere), f"{sum(elsewhere)}/{len(later)}"))
    t_restart = time.monotonic()
    for p in victims:
        cluster.restart(p)
    closed = _wait_closed(victims, dead_agreements, CLOSE_TIMEOUT_S)
    report.figures["restart_close_s"] = round(time.monotonic() - t_restart, 1)
    report.verdicts.append(Verdict("restarted providers close their chains", closed,
                                   f"{sum(len(a) for a in dead_agreements.values())} agreements"))
    return _finish(cluster, report, since)


def _agreements_running(cluster: Cluster, provider: Node) -> set[str]:
    return {j["agreement_id"] for j in (cluster.status(provider) or {}).get("jobs", [])}


def _wait_closed(victims: list[Node], agreements: dict[str, set[str]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_closed(p, agreements[p.name]) for p in victims):
            return True
        time.sleep(0.5)
    return False


def _closed(provider: Node, agreements: set[str]) -> bool:
    from p2p.receipt_records import Receipt

    with Store(provider.db, readonly=True) as store:
        for ag in agreements:
            row = store.conn.execute("SELECT body FROM receipts WHERE agreement_id = ? ORDER BY seq DESC LIMIT 1",
                                     (bytes.fromhex(ag),)).fetchone()
            if row is None or Receipt.decode(row[0]).reason != PROVIDER_RESTART:
                return False
    return True


def bootstrap_loss(cluster: Cluster) -> Report:
    report, since = _start(cluster, "bootstrap-loss")
    dead = cluster.bootstraps[:2]
    for b in dead:
        cluster.kill(b)
    t0 = time.monotonic()
    newcomer = cluster.add_provider(f"p{len(cluster.nodes)}")
    watcher = cluster.add_watcher(f"w{len(cluster.nodes)}")
    report.figures["join_s"] = round(time.monotonic() - t0, 1)
    found = cluster.watcher_command(watcher, {"op": "find"}, "find", 40)["count"]
    report.verdicts.append(Verdict("new nodes join through the third bootstrap", found >= 1 and newcomer.alive(),
                                   f"the new watcher's lookup names {found} providers"))
    results = run_jobs(cluster, report, cluster.of_role("agent"), 1)
    report.verdicts.append(Verdict("jobs run without 2 of 3 bootstrap hosts", all(ok for ok, _ in results),
                                   str([r for _, r in results])))
    for b in dead:
        cluster.restart(b)
    return _finish(cluster, report, since)


def churn(cluster: Cluster, *, minutes: float, changes_per_min: float, seed: int = 21) -> Report:
    report, since = _start(cluster, "churn")
    rng = random.Random(seed)
    end = time.monotonic() + minutes * 60
    lookups, empty, joined, left = 0, 0, 0, 0
    watcher = cluster.of_role("watcher")[0]
    while time.monotonic() < end:
        providers = [p for p in cluster.of_role("provider") if p.alive()]
        if len(providers) > 2 and rng.random() < 0.5:
            cluster.remove(rng.choice(providers))
            left += 1
        else:
            cluster.add_provider(f"c{joined}")
            joined += 1
        found = cluster.watcher_command(watcher, {"op": "find"}, "find", 40)["count"]
        lookups += 1
        empty += found == 0
        time.sleep(max(0.0, min(60 / changes_per_min, end - time.monotonic())))
    report.figures.update(joined=joined, left=left, lookups=lookups)
    report.verdicts.append(Verdict("lookups keep working", empty == 0, f"{lookups - empty}/{lookups} found providers"))
    run_jobs(cluster, report, cluster.of_role("agent"), 1)
    return _finish(cluster, report, since)
