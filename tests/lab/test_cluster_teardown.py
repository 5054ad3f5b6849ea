"""The cluster harness leaves nothing behind, even when the code inside its ``with`` fails (issue 21):
no process, no namespace, no container or volume of its providers; and the invariant checks see a
container left by a provider (they are not vacuous)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from netlab import cluster_checks, cluster_scenarios, netns
from netlab.cluster import Cluster

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _namespaces_work():
    reason = netns.available()
    if reason is not None:
        if os.environ.get("SUANLI_REQUIRE_NETNS") == "1":
            pytest.fail(f"SUANLI_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def _labelled(root) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", '{{.ID}} {{.Label "suanli.owner"}}'],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    vols = subprocess.run(["docker", "volume", "ls", "--format", '{{.Name}} {{.Label "suanli.owner"}}'],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    return [line for line in (out + vols).splitlines() if str(root) in line]


def test_a_failure_inside_the_cluster_tears_down_processes_namespaces_and_containers(tmp_path, demo_image):
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), Cluster(tmp_path / "c", image=demo_image) as cluster:
        cluster_scenarios.build(cluster, providers=1, agents=1, watchers=0, bootstraps=1)
        lab_id = cluster.lab.id
        job = cluster.run_job(cluster.nodes["a0"], 60)
        provider, agreement = cluster_scenarios.wait_for_job_on(cluster, 60)
        assert _labelled(tmp_path / "c"), "the running job's container carries the owner label"
        cluster.kill(provider)  # a crash leaves the job's container behind: the check must see it
        time.sleep(1)
        stray = cluster_checks.stray_containers(tmp_path / "c", set())
        assert not stray.ok and agreement[:12] in stray.detail, stray
        pids = [n.proc.pid for n in cluster.nodes.values() if n.proc] + [job.pid]
        raise RuntimeError("boom")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    assert not [ns for ns in netns.lab_namespaces() if ns.startswith(lab_id)]
    assert _labelled(tmp_path / "c") == []
