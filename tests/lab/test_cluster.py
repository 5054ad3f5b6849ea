"""Issue 21, the CI version: 12 real nodes, each in its own namespace (3 bootstrap hosts, 5 CPU-only
providers, 2 buyer agents, 2 watcher nodes); a partition while jobs run, then the heal; kill -9 of a
provider with a job running, then its restart. Every invariant (netlab.cluster_checks) must hold.

Stated bounds: offers reconverge within RECONVERGE_S of the heal; a buyer whose provider died has its
result within the job's limit (no traceback); the restarted provider closes the dead agreement within
netlab.cluster_faults.CLOSE_TIMEOUT_S. Skips only where ``netlab.netns.available()`` says no, and fails
instead under SUANLI_REQUIRE_NETNS=1 (CI sets it).
"""

from __future__ import annotations

import os

import pytest

from netlab import cluster_faults, cluster_scenarios, netns
from netlab.cluster import Cluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CUT_S = 15.0
RECONVERGE_S = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, docker_client):
    reason = netns.available()
    if reason is not None:
        if os.environ.get("SUANLI_REQUIRE_NETNS") == "1":
            pytest.fail(f"SUANLI_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    from sandbox.images import ensure_demo_image

    with Cluster(tmp_path_factory.mktemp("cluster"), image=ensure_demo_image(docker_client)) as c:
        cluster_scenarios.build(c, providers=5, agents=2, watchers=2)
        assert len(c.nodes) == 12
        yield c


def _check(report: cluster_scenarios.Report) -> None:
    print(cluster_scenarios.describe(report))
    assert report.ok, "\n".join(report.broken()) + "\n" + cluster_scenarios.describe(report)


def test_a_partition_while_jobs_run_heals_and_every_invariant_holds(cluster):
    report = cluster_faults.partition(cluster, cut_s=CUT_S, reconverge_timeout_s=RECONVERGE_S)
    _check(report)
    assert report.figures["reconverge_s"] is not None and report.figures["reconverge_s"] <= RECONVERGE_S
    assert report.jobs["attempted"] >= 6


def test_a_provider_killed_mid_job_is_set_aside_and_closes_its_chain_on_restart(cluster):
    report = cluster_faults.provider_crash(cluster, fraction=0.2, job_s=30)
    _check(report)
    assert len(report.figures["victims"]) == 1
    assert report.jobs["attempted"] == 4
