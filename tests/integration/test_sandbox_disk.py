"""H4: a job's /io is a filesystem of the agreed size, on the REAL Docker engine (no registry).

A job that writes past its disk gets ENOSPC and the host's free space drops by no more than the
agreed size; a job is refused when the host has less free disk than it promised, or when it would eat
into the provider's own reserve (1 GiB or 5 %); the disk file and
its loop device are gone after the job and, after a crash, after the reaper.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import replace

import pytest
import trio
from cli_helpers import tmpfs_mounted
from container_life import run_container

from p2p.errors import SandboxError
from sandbox.disk import disk_files, free_bytes, loop_devices
from sandbox.prepare import prepare_job
from sandbox.reaper import reap_orphans
from sandbox.spec import LABEL_NODE, ProviderPolicy, SandboxJob

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root (the provider daemon runs as root)")]
AGREEMENT = "d1" * 32
MIB = 1 << 20


@pytest.fixture
def node(docker_client):
    node_id = f"test-{uuid.uuid4().hex[:12]}"
    yield node_id
    label = {"label": f"{LABEL_NODE}={node_id}"}
    containers = docker_client.api.containers(all=True, filters=label)
    volumes = docker_client.api.volumes(filters=label).get("Volumes") or []
    for c in containers:
        docker_client.api.remove_container(c["Id"], force=True, v=True)
    for v in volumes:
        docker_client.api.remove_volume(v["Name"], force=True)
    assert not containers and not volumes, "the sandbox left containers or volumes behind"


@pytest.fixture
def policy(tmp_path):
    return ProviderPolicy(stop_grace_ms=1000, disk_dir=str(tmp_path / "disks"))


@pytest.fixture
def engine(docker_client):
    from sandbox.engine import Engine
    return Engine(docker_client)


async def _run(engine, image, node, policy, command, disk_mib, **kw):
    spec = SandboxJob(image, ("sh", "-c", command), disk_mib=disk_mib, max_duration_ms=60_000, **kw)
    plan = await prepare_job(engine, spec, policy, node_id=node, agreement_id=AGREEMENT,
                             job_key=uuid.uuid4().hex[:12])
    logs = []
    outcome = await run_container(engine, plan, on_log=logs.append, meter_interval_s=1.0)
    return plan, outcome.exit, [line.text for line in logs]


async def test_a_job_that_writes_past_its_disk_gets_enospc_and_the_host_does_not(engine, demo_image, node, policy,
                                                                                   tmp_path):
    before = free_bytes(tmp_path)
    plan, result, lines = await _run(
        engine, demo_image, node, policy,
        "dd if=/dev/zero of=/io/out/big bs=1M count=200 2>&1; echo rc=$?; df -k /io | tail -1", disk_mib=32)
    text = "\n".join(lines)
    assert "No space left on device" in text and "rc=1" in text, text
    assert result.exit_code == 0
    # The filesystem is the agreed 32 MiB (ext4's own metadata takes a little of it).
    size_k = int(lines[-1].split()[1])
    assert 24 * 1024 <= size_k <= 32 * 1024, lines[-1]
    # Nothing is left: no file, no loop device; the host's free space is back (within other writers' noise).
    assert disk_files(tmp_path / "disks") == []
    assert loop_devices(tmp_path / "disks" / (plan.volume_name + ".ext4")) == []
    assert free_bytes(tmp_path) > before - 16 * MIB


async def test_the_disk_holds_the_inputs_and_hands_back_outputs(engine, demo_image, node, policy):
    spec = SandboxJob(demo_image, ("sh", "-c", "cat /io/in/a.txt > /io/out/b.txt; id -u; touch /io/x && echo w"),
                   disk_mib=16, max_duration_ms=60_000)
    plan = await prepare_job(engine, spec, policy, node_id=node, agreement_id=AGREEMENT, job_key=uuid.uuid4().hex[:12])
    from sandbox.runner import open_job
    async with open_job(engine, plan, inputs={"a.txt": b"hello"}) as job:
        await job.start()
        result = await job.wait()
        out = await job.read_outputs()
    assert result.exit_code == 0
    from sandbox.jobio import read_output_tar
    assert read_output_tar(out) == {"b.txt": b"hello"}


async def test_a_job_is_refused_when_the_host_has_less_free_disk_than_promised(engine, demo_image, node, policy,
                                                                               tmp_path):
    free_mib = free_bytes(tmp_path) // MIB
    asked = free_mib + 1024
    spec = SandboxJob(demo_image, ("true",), disk_mib=asked, max_duration_ms=60_000)
    big = replace(policy, max_disk_mib=asked)
    plan = await prepare_job(engine, spec, big, node_id=node, agreement_id=AGREEMENT, job_key=uuid.uuid4().hex[:12])
    with pytest.raises(SandboxError) as caught:  # measured where the disk is reserved, before any container
        await run_container(engine, plan)
    assert caught.value.fields.get("reason") == "disk_full"
    assert disk_files(tmp_path / "disks") == []


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 1 GiB + 64 MiB (tmpfs: nothing is written until a job takes space)."""
    with tmpfs_mounted(tmp_path / "small", 1088) as mount:
        yield mount


async def test_a_job_may_not_take_the_providers_reserve(engine, demo_image, node, small_disk):
    # 1088 MiB free, 1 GiB of it the provider's reserve: 64 MiB for jobs. 128 MiB fits in what is free,
    # but would leave the provider's own database 960 MiB (a bigger job: 0 bytes).
    policy = ProviderPolicy(stop_grace_ms=1000, disk_dir=str(small_disk / "disks"))
    with pytest.raises(SandboxError, match="keeps 1024 MiB of it for itself") as caught:
        await _run(engine, demo_image, node, policy, "true", disk_mib=128)
    assert caught.value.fields.get("reason") == "disk_full"
    assert disk_files(small_disk / "disks") == [] and free_bytes(small_disk) == 1088 * MIB
    _, result, _ = await _run(engine, demo_image, node, policy, "df -k /io | tail -1", disk_mib=32)  # fits
    assert result.exit_code == 0


CRASHING_RUNNER = """
import os, signal, sys, trio
from sandbox.engine import Engine, connect
from sandbox.prepare import prepare_job
from sandbox.runner import open_job
from sandbox.spec import SandboxJob, ProviderPolicy

async def main(image, node, disk_dir):
    engine = Engine(connect())
    plan = await prepare_job(engine, SandboxJob(image, ("sleep", "600"), disk_mib=16),
                             ProviderPolicy(disk_dir=disk_dir), node_id=node, agreement_id="ee" * 32, job_key=node)
    async with open_job(engine, plan) as job:
        await job.start()
        print(plan.volume_name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no finally runs

trio.run(main, *sys.argv[1:])
"""


async def test_the_reaper_removes_a_crashed_runners_disk(engine, demo_image, node, tmp_path):
    disks = tmp_path / "disks"
    proc = await trio.run_process([sys.executable, "-c", CRASHING_RUNNER, demo_image, node, str(disks)],
                                  capture_stdout=True, check=False)
    assert proc.returncode == -9
    disk = disks / (proc.stdout.decode().strip() + ".ext4")
    assert disk.exists() and loop_devices(disk)  # left behind, attached and mounted
    report = await reap_orphans(engine, node, disk_dir=disks)
    assert len(report.containers) == 1 and len(report.volumes) == 1 and report.disks == (disk.name,)
    assert not disk.exists() and loop_devices(disk) == []
