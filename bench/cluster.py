"""Cluster benchmark (issue 21): N real ``suanli`` processes, each in its own network namespace.

    sudo .venv/bin/python bench/cluster.py [--nodes 20] [--scenarios steady,partition,provider-crash,
        bootstrap-loss,churn] [--cut-s 60] [--churn-minutes 10] [--churn-per-min 6] [--soak MINUTES] [--json]

The cluster (netlab.cluster) is 3 bootstrap hosts, 2 watcher nodes (they measure what a buyer sees),
``agents`` buyer agents (N // 10, at least 2, at most 10) and the rest providers with CPU-only offers of
one core and 512 MiB each; jobs are real Docker containers of the demo image. The scenarios run one after
another on the same cluster (netlab.cluster_faults); each prints offer propagation p50/p95/p99 (offers
created during the scenario, from creation to a watcher's receipt), find p95 (a watcher's DHT lookup),
jobs attempted / succeeded / failed with reasons, reconvergence after a heal, RSS per node
(min/median/max) at its start and end, and every invariant's verdict.

``--soak MINUTES`` (not in CI): the steady network under a steady job load (every agent runs one short job
after another) for that long; it reports each node's RSS growth, extrapolated per hour, and the invariants
at the end. Needs root (network namespaces) and a Docker engine; exits 2 with one line otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: keep bench/ from shadowing packages
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netlab import cluster_checks, cluster_faults, cluster_scenarios, netns  # noqa: E402
from netlab.cluster import Cluster, ClusterError  # noqa: E402
from netlab.cluster_proc import ProcError  # noqa: E402

SCENARIOS = ("steady", "partition", "provider-crash", "bootstrap-loss", "churn")


def topology(nodes: int) -> dict[str, int]:
    agents = min(10, max(2, nodes // 10))
    providers = nodes - 3 - 2 - agents
    if providers < 2:
        raise SystemExit(f"--nodes must be at least {3 + 2 + agents + 2}")
    return {"providers": providers, "agents": agents, "watchers": 2}


def soak(cluster: Cluster, minutes: float) -> cluster_scenarios.Report:
    report = cluster_scenarios.Report("soak")
    report.figures["rss_start_mib"] = cluster_scenarios.rss_mib(cluster)
    start = {n.name: cluster_checks.proc_stats(n.proc.pid) for n in cluster.nodes.values() if n.proc and n.alive()}
    t0 = time.monotonic()
    since = time.time_ns() // 1_000_000
    while time.monotonic() - t0 < minutes * 60:
        cluster_scenarios.run_jobs(cluster, report, cluster.of_role("agent"), 2)
    hours = (time.monotonic() - t0) / 3600
    growth, by_node = [], {}
    for n in cluster.nodes.values():
        before, now = start.get(n.name), cluster_checks.proc_stats(n.proc.pid) if n.proc and n.alive() else None
        if before and now:
            growth.append(100 * (now["rss_kib"] - before["rss_kib"]) / before["rss_kib"] / hours)
            by_node[n.name] = round(growth[-1], 1)
    report.figures["minutes"] = round((time.monotonic() - t0) / 60, 1)
    report.figures["rss_growth_pct_per_hour"] = {
        "min": round(min(growth), 2), "median": round(statistics.median(growth), 2), "max": round(max(growth), 2)}
    report.figures["rss_growth_top_nodes"] = sorted(by_node.items(), key=lambda kv: -kv[1])[:3]
    report.figures["propagation_ms"] = cluster_scenarios.percentiles(cluster_scenarios.propagation_ms(cluster, since))
    report.figures["rss_end_mib"] = cluster_scenarios.rss_mib(cluster)
    cluster_scenarios.invariants(cluster, report)
    return report


def line(report: cluster_scenarios.Report) -> str:
    f = report.figures
    prop, find = f.get("propagation_ms", {}), f.get("find_ms", {})
    jobs = ", ".join(f"{k} {v}" for k, v in report.jobs.items())
    out = [f"== {report.name}",
           f"  propagation ms p50/p95/p99: {prop.get('p50')}/{prop.get('p95')}/{prop.get('p99')} (n={prop.get('n')})",
           f"  find p95 ms: {find.get('p95')} (n={find.get('n')})",
           f"  jobs: {jobs or 'none'}"]
    for key in ("reconverge_s", "cut_s", "cut_offers_heard_after_heal_ms", "jobs_during_cut", "long_jobs",
                "victims", "jobs_at_crash", "restart_close_s", "join_s", "joined", "left", "lookups",
                "minutes", "rss_growth_pct_per_hour", "rss_growth_top_nodes"):
        if key in f:
            out.append(f"  {key}: {f[key]}")
    out.append(f"  RSS MiB start {f.get('rss_start_mib')}  end {f.get('rss_end_mib')}")
    out += [f"  {v.line()}" for v in report.verdicts]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--cut-s", type=float, default=60)
    parser.add_argument("--churn-minutes", type=float, default=10)
    parser.add_argument("--churn-per-min", type=float, default=6)
    parser.add_argument("--soak", type=float, default=0, metavar="MINUTES")
    parser.add_argument("--json", action="store_true", help="print each scenario's report as JSON too")
    args = parser.parse_args()
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    reason = netns.available()
    if reason is not None:
        print(f"bench/cluster.py needs network namespaces: {reason}", file=sys.stderr)
        return 2
    import docker

    from sandbox.images import ensure_demo_image

    try:
        image = ensure_demo_image(docker.from_env())
    except Exception as exc:  # noqa: BLE001 - a script's boundary: one line, no traceback
        print(f"bench/cluster.py needs a Docker engine: {exc}", file=sys.stderr)
        return 2
    shape = topology(args.nodes)
    broken = 0
    with tempfile.TemporaryDirectory(prefix="suanli-cluster-") as tmp, Cluster(Path(tmp), image=image) as cluster:
        t0 = time.monotonic()
        try:
            cluster_scenarios.build(cluster, **shape)
        except ClusterError as exc:
            print(f"the cluster did not start: {exc}", file=sys.stderr)
            return 1
        print(f"cluster of {len(cluster.nodes)} nodes ({shape}, 3 bootstrap hosts) up in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        runs = {
            "steady": lambda: cluster_faults.steady(cluster),
            "partition": lambda: cluster_faults.partition(cluster, cut_s=args.cut_s, reconverge_timeout_s=120),
            "provider-crash": lambda: cluster_faults.provider_crash(cluster, fraction=0.2),
            "bootstrap-loss": lambda: cluster_faults.bootstrap_loss(cluster),
            "churn": lambda: cluster_faults.churn(cluster, minutes=args.churn_minutes,
                                                  changes_per_min=args.churn_per_min),
        }
        plan = [(name, runs[name]) for name in chosen]
        if args.soak:
            plan.append(("soak", lambda: soak(cluster, args.soak)))
        for name, run in plan:
            t = time.monotonic()
            try:
                report = run()
            except (ProcError, ClusterError) as exc:
                print(f"== {name}: did not finish: {str(exc)[:2000]}", flush=True)
                broken += 1
                continue
            print(line(report) + f"\n  ({time.monotonic() - t:.0f} s)", flush=True)
            if args.json:
                print(json.dumps(report.as_dict(), default=str), flush=True)
            broken += not report.ok
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
