"""Issue 13 H4, M5, M6 through the real provider: real hosts on 127.0.0.1, real Docker, real SQLite,
real processes holding real locks.

- H4: a provider refuses a job whose disk it cannot supply (free disk below what it promised).
- M5: a job that floods its logs reaches the buyer at most at the rate limit, with one note; it still
  finishes and is billed.
- M6: a second daemon with the same key refuses to start; the reaper spares the jobs of a live daemon
  and reaps them once it is dead; a job killed from outside ends `killed_externally`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace

import pytest
import trio

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, JobFailed, run_job
from node.daemonlock import lock_alive, take_daemon_lock
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.envelope import sign_record
from p2p.errors import ConfigError
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host, wait_until
from sandbox.disk import free_bytes
from sandbox.engine import Engine
from sandbox.jobio import read_output_tar
from sandbox.reaper import reap_orphans
from sandbox.spec import LABEL_AGREEMENT, LABEL_NODE, LABEL_OWNER, LABEL_ROLE
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker
MIB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def proposal_with_disk(buyer, offer, image, command, disk_mib):
    base = make_proposal(buyer, offer, image, command).record
    return sign_record(replace(base, resources=replace(base.resources, disk_mib=disk_mib)), buyer)


async def _buyer(runtime, buyer, tmp_path, proposal, hooks=None):
    async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
            open_store(tmp_path / f"buyer-{uuid.uuid4().hex[:6]}.db") as store:
        deal = await negotiate_with(client, runtime.setup.key.peer_id, buyer, proposal)
        await store.put_agreement(deal.agreement)
        return await run_job(client, buyer, store, deal, b"", None, hooks or BuyerHooks(), trio.Event(), now_ms())


@pytest.mark.skipif(os.geteuid() != 0, reason="job disks need root (loop devices)")
async def test_a_job_is_refused_when_free_disk_is_below_what_the_provider_promised(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    free_mib = free_bytes(tmp_path) // MIB
    # The operator promises far more disk than the filesystem has; a buyer asks for more than is free.
    setup = replace(local_setup(tmp_path / "provider", provider_key), disk_mib=free_mib * 4)
    async with open_provider(setup) as runtime:
        assert runtime.offer.record.capacity.disk_mib == free_mib * 4
        with trio.fail_after(60):
            with pytest.raises(JobFailed, match="disk"):
                await _buyer(runtime, buyer, tmp_path,
                             proposal_with_disk(buyer, runtime.offer, demo_image, ["true"], free_mib + 1024))
    assert not list((tmp_path / "provider" / "disks").glob("*.ext4"))
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok and result.report.amount_micros == 0


async def test_a_log_flood_reaches_the_buyer_at_the_rate_limit_with_one_note(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    setup = local_setup(tmp_path / "provider", provider_key)
    rate, burst = 1024, 2048
    setup = replace(setup, policy=replace(setup.policy, log_rate_bytes_per_s=rate, log_burst_bytes=burst))
    received, notes = [], []
    hooks = BuyerHooks(on_log=lambda stream, data: received.append(data),
                       on_status=lambda phase, detail: notes.append((phase, detail)))
    async with open_provider(setup) as runtime:
        with trio.fail_after(90):
            start = trio.current_time()
            outcome = await _buyer(runtime, buyer, tmp_path,
                                   make_proposal(buyer, runtime.offer, demo_image,
                                                 ["sh", "-c", "timeout 3 yes flood; echo done"]), hooks)
            elapsed = trio.current_time() - start
    assert outcome.reason == "completed" and outcome.exit_code == 0
    assert outcome.last.amount_micros > 0  # billed
    delivered = sum(len(d) + 1 for d in received)
    assert delivered <= rate * elapsed + burst, (delivered, elapsed)
    dropped = [d for p, d in notes if p == "logs_dropped"]
    assert len(dropped) == 1 and dropped[0].endswith(f"bytes of logs dropped: rate limit {rate} B/s")
    assert int(dropped[0].split()[0]) > 10 * burst


async def test_a_second_daemon_with_the_same_key_refuses_to_start(tmp_path, docker_client):
    key = generate_key()
    async with open_provider(local_setup(tmp_path / "a", key)):
        with pytest.raises(ConfigError, match="already running with data dir"):  # the same data dir
            async with open_provider(local_setup(tmp_path / "a", key)):
                pass
        with pytest.raises(ConfigError, match="with this key .* is running on this Docker engine"):
            async with open_provider(local_setup(tmp_path / "b", key)):  # another data dir, the same key
                pass
    async with open_provider(local_setup(tmp_path / "b", key)):  # once the first has stopped, it may
        pass
    label = {"label": f"{LABEL_NODE}={key.peer_id}"}
    assert not docker_client.api.volumes(filters=label).get("Volumes")


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from node.daemonlock import take_daemon_lock
    lock = take_daemon_lock(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(120)
""")


async def test_the_reaper_spares_a_live_daemons_container_and_reaps_it_once_dead(tmp_path, demo_image,
                                                                                 docker_client):
    """Two data dirs, one key: the other daemon is a real process holding its real lock."""
    node_id = f"test-{uuid.uuid4().hex[:12]}"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    holder = await trio.lowlevel.open_process([sys.executable, "-c", _HOLDER, str(other_dir)],
                                              stdout=subprocess.PIPE, cwd=ROOT)
    ctr = None
    try:
        with trio.fail_after(30):
            assert (await holder.stdout.receive_some(100)).strip() == b"locked"
        owner = str((other_dir / "provider.lock").resolve())
        ctr = docker_client.api.create_container(demo_image, ["sleep", "60"], labels={
            LABEL_NODE: node_id, LABEL_AGREEMENT: "ab" * 32, LABEL_OWNER: owner})
        docker_client.api.start(ctr)
        # Marker volumes: the live daemon's, and one a daemon of another key left when it was killed.
        live_marker, dead_marker = f"suanli-daemon-{node_id}-live", f"suanli-daemon-{node_id}-dead"
        docker_client.api.create_volume(live_marker, labels={LABEL_NODE: node_id, LABEL_ROLE: "daemon",
                                                             LABEL_OWNER: owner})
        docker_client.api.create_volume(dead_marker, labels={LABEL_NODE: "someone-else", LABEL_ROLE: "daemon",
                                                             LABEL_OWNER: str(tmp_path / "gone" / "provider.lock")})
        mine = take_daemon_lock(tmp_path)
        try:
            def alive(path):
                return path != mine.label and lock_alive(path)

            engine = Engine(docker_client)
            report = await reap_orphans(engine, node_id, owner_alive=alive)
            assert report.containers == () and report.spared == (owner,)
            assert docker_client.api.inspect_container(ctr)["State"]["Running"]
            assert dead_marker in report.volumes and live_marker not in report.volumes
            holder.kill()
            with trio.fail_after(10):
                await holder.wait()
            report = await reap_orphans(engine, node_id, owner_alive=alive)
            assert report.containers == (ctr["Id"],) and live_marker in report.volumes
        finally:
            mine.close()
    finally:
        holder.kill()
        with trio.fail_after(10):
            await holder.wait()
        if ctr is not None and docker_client.api.containers(all=True, filters={"id": ctr["Id"]}):
            docker_client.api.remove_container(ctr, force=True)


@pytest.mark.parametrize("how", ["kill", "rm"])
async def test_a_job_killed_from_outside_ends_killed_externally_never_completed(tmp_path, demo_image,
                                                                                docker_client, how):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async def killer() -> None:
            filters = {"label": f"{LABEL_NODE}={provider_key.peer_id}", "status": "running"}
            await wait_until(lambda: docker_client.api.containers(filters=filters), timeout_s=30, interval_s=0.2)
            await trio.sleep(1.0)
            (ctr,) = docker_client.api.containers(filters=filters)
            if how == "kill":
                docker_client.api.kill(ctr["Id"])
            else:
                docker_client.api.remove_container(ctr["Id"], force=True)

        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                outcome = await _buyer(runtime, buyer, tmp_path,
                                       make_proposal(buyer, runtime.offer, demo_image, ["sleep", "60"]))
    assert outcome.reason == "killed_externally" and outcome.last.reason == "killed_externally"
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok, result.report.findings


async def test_a_symlink_in_io_out_is_skipped_with_a_note_and_the_rest_delivered(tmp_path, demo_image):
    """L4: the job leaves a symlink and a fifo beside its real outputs."""
    provider_key, buyer = generate_key(), generate_key()
    notes = []
    hooks = BuyerHooks(on_status=lambda phase, detail: notes.append((phase, detail)))
    command = ["sh", "-c", "echo a > /io/out/a.txt; mkdir /io/out/sub; echo b > /io/out/sub/b.txt;"
               " ln -s /etc/passwd /io/out/link; mkfifo /io/out/pipe"]
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        with trio.fail_after(60):
            outcome = await _buyer(runtime, buyer, tmp_path, make_proposal(buyer, runtime.offer, demo_image, command),
                                   hooks)
    assert outcome.reason == "completed" and outcome.outputs_arrived
    assert read_output_tar(outcome.outputs) == {"a.txt": b"a\n", "sub/b.txt": b"b\n"}
    (skipped,) = [d for p, d in notes if p == "outputs_skipped"]
    assert "out/link: a symbolic link (to '/etc/passwd')" in skipped and "out/pipe: a device or fifo" in skipped
