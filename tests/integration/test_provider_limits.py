"""Issue 13 H4, M5, M6 through the real provider: real hosts on 127.0.0.1, real Docker, real SQLite,
real processes holding real locks.

- H4: a provider refuses a job whose disk it cannot supply (free disk below what it promised).
- M5: a job that floods its logs reaches the buyer at most at the rate limit, with one note; it still
  finishes and is billed.
- M6: a second daemon with the same key refuses to start, also when two start at the same moment; the
  reaper spares the jobs of a live daemon and reaps them once it is dead; a label naming a FIFO never
  hangs the start; a job killed from outside ends `killed_externally`.
- Review of issue 13: an image upload that would eat into the provider's disk reserve is refused before
  a byte arrives; a provider that cannot make job disks refuses to start with one line.
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
from cli_helpers import tmpfs_mounted

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
        with trio.fail_after(60), pytest.raises(JobFailed) as caught:
            # Refused where the disk is reserved (sandbox.disk, before any container): the buyer hears
            # why (job.fail disk_full), the job ends before it ran, and nothing is owed.
            await _buyer(runtime, buyer, tmp_path,
                         proposal_with_disk(buyer, runtime.offer, demo_image, ["true"], free_mib + 1024))
    assert caught.value.fields.get("reason") == "disk_full", caught.value
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


def _setup(data_dir, key, key_lock_dir):
    return replace(local_setup(data_dir, key), key_lock_dir=key_lock_dir)


async def test_a_second_daemon_with_the_same_key_refuses_to_start(tmp_path, docker_client):
    key = generate_key()
    (tmp_path / "locks").mkdir()
    (tmp_path / "elsewhere").mkdir()
    async with open_provider(_setup(tmp_path / "a", key, tmp_path / "locks")):
        with pytest.raises(ConfigError, match="already running with data dir"):  # the same data dir
            async with open_provider(_setup(tmp_path / "a", key, tmp_path / "locks")):
                pass
        with pytest.raises(ConfigError, match="with this key .* is running on this host"):
            async with open_provider(_setup(tmp_path / "b", key, tmp_path / "locks")):  # another data dir
                pass
        # Without the host's key lock (another lock directory), the engine's marker still tells.
        with pytest.raises(ConfigError, match="with this key .* is running on this Docker engine"):
            async with open_provider(_setup(tmp_path / "b", key, tmp_path / "elsewhere")):
                pass
    async with open_provider(_setup(tmp_path / "b", key, tmp_path / "locks")):  # once the first has stopped
        pass
    assert list((tmp_path / "locks").iterdir()) == []  # the key lock goes with its daemon
    label = {"label": f"{LABEL_NODE}={key.peer_id}"}
    assert not docker_client.api.volumes(filters=label).get("Volumes")


async def test_of_two_daemons_with_one_key_starting_together_exactly_one_runs(tmp_path, docker_client):
    """Defect 8 of the review: each used to reap before creating its marker, so both saw nobody."""
    key = generate_key()
    (tmp_path / "locks").mkdir()
    ran, refused, tried = [], [], [trio.Event(), trio.Event()]

    async def start(index: int) -> None:
        try:
            async with open_provider(_setup(tmp_path / str(index), key, tmp_path / "locks")):
                ran.append(index)
                tried[index].set()
                await tried[1 - index].wait()  # still running while the other one tries
        except ConfigError as exc:
            refused.append((index, exc))
            tried[index].set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start, 0)
            nursery.start_soon(start, 1)
    assert len(ran) == 1 and len(refused) == 1, (ran, refused)
    assert refused[0][1].fields.get("reason") == "already_running"
    assert not docker_client.api.volumes(filters={"label": f"{LABEL_NODE}={key.peer_id}"}).get("Volumes")


async def test_a_label_naming_a_fifo_does_not_hang_the_start_and_other_nodes_markers_are_left_alone(
        tmp_path, docker_client):
    """Defect 9 of the review: the reaper opened every node's marker label, blocking on a FIFO."""
    fifo = tmp_path / "provider.lock"
    os.mkfifo(fifo)
    foreign = f"suanli-daemon-test-{uuid.uuid4().hex[:12]}"
    docker_client.api.create_volume(foreign, labels={LABEL_NODE: "someone-else", LABEL_ROLE: "daemon",
                                                     LABEL_OWNER: str(fifo)})
    unblocked = []

    async def watchdog() -> None:  # a reader blocked in open() cannot be cancelled: a writer releases it
        await trio.sleep(30)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            unblocked.append(True)
        except OSError:
            pass

    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watchdog)
                async with open_provider(_setup(tmp_path / "p", generate_key(), tmp_path)):
                    pass
                nursery.cancel_scope.cancel()
        assert unblocked == [], "the provider's start blocked on the FIFO"
        assert docker_client.api.inspect_volume(foreign)["Name"] == foreign  # another node's: not ours to judge
    finally:
        docker_client.api.remove_volume(foreign, force=True)


async def test_a_provider_that_cannot_make_job_disks_refuses_to_start_with_one_line(tmp_path):
    """Defect 7 of the review: a non-root provider advertised disk and then failed every job."""
    from sandbox.disk import disk_support_problem

    setup = local_setup(tmp_path / "provider", generate_key())
    with pytest.raises(ConfigError) as caught:
        async with open_provider(setup, disk_support=lambda: disk_support_problem(1000)):
            pass
    assert "must run as root" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "provider").exists()  # refused before anything was created


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of 1 GiB + 64 MiB: 64 MiB above the provider's reserve."""
    with tmpfs_mounted(tmp_path / "small", 1088) as mount:
        yield mount


async def test_an_image_upload_that_would_eat_the_disk_reserve_is_refused_before_it_starts(small_disk, tmp_path):
    from p2p.framing import FramedStream
    from p2p.job_wire import MAX_FRAME_BYTES, PROTOCOL_ID, Fail, Start, Status, decode_message

    provider_key, buyer = generate_key(), generate_key()
    setup = replace(local_setup(small_disk / "provider", provider_key), disk_mib=32, key_lock_dir=tmp_path)
    image = "sha256:" + "5e" * 32  # not on this engine: the provider must ask for its archive
    async with open_provider(setup) as runtime, \
            open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
        base = make_proposal(buyer, runtime.offer, image, ["true"]).record
        proposal = sign_record(replace(base, job=replace(base.job, image_archive_sha256=b"\x11" * 32),
                                       resources=replace(base.resources, disk_mib=16)), buyer)
        with trio.fail_after(60):
            deal = await negotiate_with(client, provider_key.peer_id, buyer, proposal)
            framed = FramedStream(await client.open_stream(provider_key.peer_id, PROTOCOL_ID),
                                  max_frame_bytes=MAX_FRAME_BYTES)
            await framed.send_frame(Start(deal.agreement.record_id, 0, 40 * MIB).encode())  # 2 x 40 > 64 MiB
            seen = []
            while (payload := await framed.receive_frame()) is not None:
                msg = decode_message(payload)
                seen.append(msg)
                if isinstance(msg, Fail) or (isinstance(msg, Status) and msg.phase == "need_image"):
                    break
    assert isinstance(seen[-1], Fail), seen
    assert seen[-1].reason == "disk_full" and "keeps 1024 MiB of it for itself" in seen[-1].detail, seen[-1]


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
