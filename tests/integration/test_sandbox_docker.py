"""The sandbox against the REAL Docker engine, with the locally built busybox image (no registry).

Every test runs real containers; they skip only when no Docker engine answers (with the reason).
Every test gets its own node id, and afterwards nothing labelled with it may remain (checked, then
removed so that a failure never leaks containers into the next test).
No test touches a network address: the jobs have no network at all.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import textwrap
import uuid

import docker.errors
import pytest
import trio
from container_life import run_container

from p2p.errors import GpuUnavailableError, ImageError, SandboxError
from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.engine import Engine, probe_engine
from sandbox.images import build_demo_archive, ensure_demo_image, load_image_archive
from sandbox.jobio import read_output_tar
from sandbox.meter import CgroupFileReader, StatsApiReader, open_usage_reader, run_meter
from sandbox.metering import cpu_bound_core_ms
from sandbox.prepare import prepare_job
from sandbox.reaper import reap_orphans
from sandbox.runner import open_job
from sandbox.spec import LABEL_NODE, ProviderPolicy, SandboxJob

pytestmark = pytest.mark.docker
AGREEMENT = "a1" * 32
FAST = ProviderPolicy(stop_grace_ms=1000)


@pytest.fixture(scope="module")
def client(docker_client):
    """The session's engine client (tests/conftest.py: fails, never skips, under SUANLI_REQUIRE_DOCKER=1)."""
    return docker_client


@pytest.fixture(scope="module")
def image(client):
    return ensure_demo_image(client)


@pytest.fixture
def engine(client):
    return Engine(client)


@pytest.fixture
def node(client):
    """A fresh node id; afterwards nothing labelled with it may remain."""
    node_id = f"test-{uuid.uuid4().hex[:12]}"
    yield node_id
    label = {"label": f"{LABEL_NODE}={node_id}"}
    containers = client.api.containers(all=True, filters=label)
    volumes = client.api.volumes(filters=label).get("Volumes") or []
    for c in containers:
        client.api.remove_container(c["Id"], force=True, v=True)
    for v in volumes:
        client.api.remove_volume(v["Name"], force=True)
    assert not containers and not volumes, "the sandbox left containers or volumes behind"


async def plan_for(engine, image, node, command, policy=FAST, **spec):
    """The plan of `sh -c command` (a str) or of `command` (a tuple), keyed uniquely."""
    spec.setdefault("max_duration_ms", 30_000)
    argv = ("sh", "-c", command) if isinstance(command, str) else command
    return await prepare_job(engine, SandboxJob(image, argv, **spec), policy, node_id=node,
                             agreement_id=AGREEMENT, job_key=uuid.uuid4().hex[:12])


async def run(engine, image, node, command, policy=FAST, inputs=None, interval_s=1.0, **spec):
    plan = await plan_for(engine, image, node, command, policy, **spec)
    logs, samples = [], []
    outcome = await run_container(engine, plan, inputs=inputs, on_log=logs.append, on_sample=samples.append,
                            meter_interval_s=interval_s)
    return outcome.exit, logs, samples


def stdout(logs):
    return [line.text for line in logs if line.stream == "stdout"]


async def test_engine_probe(client):
    facts = probe_engine(client)
    assert "runc" in facts.runtimes and facts.cgroup_version in (1, 2)
    assert tuple(map(int, facts.api_version.split("."))) >= (1, 41)  # negotiated, not docker-py's 1.45


async def test_exit_code(engine, image, node):
    result, _, _ = await run(engine, image, node, "exit 7")
    assert (result.exit_code, result.oom_killed, result.timed_out) == (7, False, False)


async def test_oom_kill_detected(engine, image, node):
    result, _, _ = await run(engine, image, node, "a=$(head -c 200000000 /dev/zero | tr '\\0' x)",
                             memory_mib=32)
    assert result.oom_killed and result.exit_code != 0


async def test_deadline_stops_sleep_600(engine, image, node):
    start = trio.current_time()
    result, _, _ = await run(engine, image, node, "sleep 600", max_duration_ms=1500)
    assert result.timed_out and result.exit_code != 0
    assert trio.current_time() - start < 1.5 + 1 + 5  # deadline + grace + slack
    assert 1_400 <= result.final.wall_ms <= 4_000


async def test_no_network_interface_but_lo(engine, image, node):
    result, logs, _ = await run(engine, image, node, "ls /sys/class/net")
    assert result.exit_code == 0 and stdout(logs) == ["lo"]


async def test_root_read_only_but_tmp_and_out_writable(engine, image, node):
    result, logs, _ = await run(engine, image, node, textwrap.dedent("""
        touch /x 2>/dev/null && echo root=yes || echo root=no
        touch /tmp/x && echo tmp=yes
        echo data > /io/out/y && echo out=yes
        touch /io/in/z 2>/dev/null && echo in=yes || echo in=no
    """))
    assert result.exit_code == 0
    assert stdout(logs)[:3] == ["root=no", "tmp=yes", "out=yes"]


async def test_no_capabilities_and_no_new_privileges(engine, image, node):
    command = "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status"
    _, logs, _ = await run(engine, image, node, command)
    fields = dict(line.split(":\t") for line in stdout(logs))
    assert fields == {"CapPrm": "0000000000000000", "CapEff": "0000000000000000",
                      "CapBnd": "0000000000000000", "NoNewPrivs": "1"}


async def test_user_is_nobody(engine, image, node):
    _, logs, _ = await run(engine, image, node, "id -u; id -g")
    assert stdout(logs) == ["65534", "65534"]


async def test_fork_bomb_hits_pids_limit_and_host_is_fine(engine, image, node):
    policy = dataclasses.replace(FAST, pids_limit=48)
    result, logs, _ = await run(engine, image, node, "b() { b | b & }; b; sleep 2", policy=policy,
                                cpus_millicores=500, max_duration_ms=3000)
    assert any("can't fork" in line.text for line in logs if line.stream == "stderr")
    assert result.final.wall_ms < 3000 + 1000 + 2000  # it ended, by itself or at the deadline
    assert (await trio.run_process(["true"])).returncode == 0  # the host still forks


async def test_file_over_fsize_limit_fails(engine, image, node):
    policy = dataclasses.replace(FAST, fsize_mib=1)
    result, logs, _ = await run(engine, image, node,
                                "head -c 3000000 /dev/zero > /io/out/f; echo rc=$?; wc -c < /io/out/f",
                                policy=policy)
    assert stdout(logs) == ["rc=153", "1048576"]  # 128 + SIGXFSZ; the file stops at the limit
    assert any("File size limit exceeded" in line.text for line in logs)


async def test_inputs_round_trip_to_outputs(engine, image, node, tmp_path):
    files = {"data.bin": os.urandom(1 << 20), "nested/dir/n.txt": b"\x00line\r\n\xff"}
    plan = await plan_for(engine, image, node, "cp -r /io/in/. /io/out/")
    outcome = await run_container(engine, plan, inputs=files, outputs_to=tmp_path / "out.tar")
    assert outcome.exit.exit_code == 0
    assert read_output_tar((tmp_path / "out.tar").read_bytes()) == files
    assert outcome.outputs.size_bytes == (tmp_path / "out.tar").stat().st_size


async def test_output_size_cap(engine, image, node, tmp_path):
    plan = await plan_for(engine, image, node, "head -c 200000 /dev/zero > /io/out/big")
    async with open_job(engine, plan) as job:
        await job.start()
        await job.wait()
        with pytest.raises(SandboxError, match="size cap"):
            await job.export_outputs(tmp_path / "o.tar", max_bytes=100_000)
    assert not (tmp_path / "o.tar").exists()


async def test_stdout_and_stderr_arrive_live_in_order(engine, image, node):
    script = "for i in 1 2 3; do echo out$i; sleep 0.3; echo err$i >&2; sleep 0.3; done"
    plan = await plan_for(engine, image, node, script)
    arrivals = []
    outcome = await run_container(engine, plan, on_log=lambda line: arrivals.append((trio.current_time(), line)))
    exited = trio.current_time()
    assert [(line.stream, line.text) for _, line in arrivals] == [
        ("stdout", "out1"), ("stderr", "err1"), ("stdout", "out2"), ("stderr", "err2"),
        ("stdout", "out3"), ("stderr", "err3")]
    assert exited - arrivals[0][0] > 1.0  # the first line came while the job was still running
    assert outcome.exit.exit_code == 0


async def test_cpu_metering_of_a_busy_loop(engine, image, node):
    result, _, samples = await run(engine, image, node, "while :; do :; done", cpus_millicores=1500,
                                   max_duration_ms=3500, interval_s=0.5)
    running = [s for s in samples if s.state == "running"]
    first, last = running[1], running[-1]
    rate = (last.cpu_core_ms - first.cpu_core_ms) / (last.wall_ms - first.wall_ms)
    assert 0.6 <= rate <= 1.1, rate  # one thread: about one core-second per second
    for s in samples:
        assert s.cpu_core_ms <= cpu_bound_core_ms(s.wall_ms, 1500)
    assert result.final.cpu_core_ms >= 0.6 * (last.wall_ms - 500)


async def test_cpu_metering_never_above_the_limit(engine, image, node):
    result, _, samples = await run(engine, image, node, "while :; do :; done & while :; do :; done",
                                   cpus_millicores=500, max_duration_ms=3000, interval_s=0.5)
    for s in samples:
        assert s.cpu_core_ms <= cpu_bound_core_ms(s.wall_ms, 500), s
    running = [s for s in samples if s.state == "running"]
    first, last = running[1], running[-1]
    rate = (last.cpu_core_ms - first.cpu_core_ms) / (last.wall_ms - first.wall_ms)
    assert 0.3 <= rate <= 0.55, rate  # two busy threads, held to half a core


async def test_cgroup_files_and_stats_api_agree(engine, image, node):
    plan = await plan_for(engine, image, node, "while :; do :; done", cpus_millicores=1000)
    async with open_job(engine, plan) as job:
        await job.start()
        files = await open_usage_reader(job)
        api = StatsApiReader(job)
        assert isinstance(files, CgroupFileReader)
        await trio.sleep(1.0)
        a, b, c = await files.read(), await api.read(), await files.read()
        assert a.cpu_usage_ns <= b.cpu_usage_ns <= c.cpu_usage_ns + 50_000_000
        assert b.cpu_usage_ns > 300_000_000 and a.mem_peak_bytes and b.mem_current_bytes
        await job.stop()


async def test_pause_and_resume_stop_and_restart_the_clock(engine, image, node):
    plan = await plan_for(engine, image, node, "while :; do :; done", cpus_millicores=500)
    send, receive = trio.open_memory_channel(100)
    async with open_job(engine, plan) as job, trio.open_nursery() as nursery:
        await job.start()
        await nursery.start(functools.partial(run_meter, job, send, interval_s=0.25))
        await trio.sleep(1.0)
        await job.pause()
        await trio.sleep(0.3)
        before = job.meter.observe(job.now_ms(), await (await open_usage_reader(job)).read())
        await trio.sleep(1.5)
        during = job.meter.observe(job.now_ms(), await (await open_usage_reader(job)).read())
        assert during.state == "paused"
        assert during.wall_ms == before.wall_ms  # the clock stopped
        assert during.cpu_core_ms - before.cpu_core_ms <= 10  # frozen: no CPU either
        await job.resume()
        await trio.sleep(1.0)
        after = job.meter.observe(job.now_ms(), await (await open_usage_reader(job)).read())
        assert 800 <= after.wall_ms - during.wall_ms <= 1_500  # and started again
        assert after.cpu_core_ms - during.cpu_core_ms >= 200
        await job.stop()
        result = await job.wait()
    assert 1_800 <= result.final.wall_ms <= 3_500  # ~1 s + ~1 s running, 1.8 s paused excluded


async def test_cancelling_mid_job_removes_container_and_volume(engine, image, node, client):
    plan = await plan_for(engine, image, node, "echo up; sleep 600", max_duration_ms=600_000)
    running = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(run_container, engine, plan, on_log=lambda line: running.set()))
            await running.wait()  # the job printed: its container is running
            nursery.cancel_scope.cancel()
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(plan.name)
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_volume(plan.volume_name)


CRASHING_RUNNER = """
import os, signal, sys, trio
from sandbox.engine import Engine, connect
from sandbox.prepare import prepare_job
from sandbox.runner import open_job
from sandbox.spec import SandboxJob, ProviderPolicy

async def main(image, node):
    engine = Engine(connect())
    plan = await prepare_job(engine, SandboxJob(image, ("sleep", "600")), ProviderPolicy(), node_id=node,
                             agreement_id="ee" * 32, job_key=node)
    async with open_job(engine, plan) as job:
        await job.start()
        print(job.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no finally runs

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_reaper_removes_what_a_crashed_runner_left(engine, image, node, client):
    proc = await trio.run_process([sys.executable, "-c", CRASHING_RUNNER, image, node], capture_stdout=True,
                                  check=False)
    assert proc.returncode == -9
    container_id = proc.stdout.decode().strip()
    label = {"label": f"{LABEL_NODE}={node}"}
    assert [c["Id"] for c in client.api.containers(filters=label)] == [container_id]
    assert len(client.api.volumes(filters=label)["Volumes"]) == 1
    other = await reap_orphans(engine, node + "-other")  # Rule 1: another node's orphans are not ours
    assert other.containers == () and client.api.containers(filters=label)
    report = await reap_orphans(engine, node)
    assert report.containers == (container_id,) and len(report.volumes) == 1
    assert not client.api.containers(all=True, filters=label)
    assert not client.api.volumes(filters=label)["Volumes"]


async def test_gpu_request_fails_clearly_before_anything_starts(engine, image, node, client):
    facts = probe_engine(client)
    if "nvidia" in facts.runtimes:
        pytest.skip("this engine has an NVIDIA runtime; the refusal is tested where it has none")
    with pytest.raises(GpuUnavailableError) as info:
        await prepare_job(engine, SandboxJob(image, ("true",), gpus=1), FAST, node_id=node,
                          agreement_id=AGREEMENT, job_key="gpu" + node)
    assert info.value.reason == "no_nvidia_runtime" and "nvidia" in str(info.value).lower()
    label = {"label": f"{LABEL_NODE}={node}"}
    assert not client.api.containers(all=True, filters=label)
    # Even a plan that skipped the gate is refused by the engine, and still cleaned up.
    plan = await prepare_job(engine, SandboxJob(image, ("true",)), FAST, node_id=node, agreement_id=AGREEMENT,
                             job_key="gpu2" + node)
    forged = dataclasses.replace(plan, gpu_uuids=("GPU-00000000-1111-2222-3333-444444444444",),
                                 gpu_capabilities=(("gpu", "compute", "utility"),))
    with pytest.raises(SandboxError, match="device driver"):
        async with open_job(engine, forged) as job:
            await job.start()


def _test_archive(env):
    layer = layer_tar([LayerEntry("bin", "dir"),
                       LayerEntry("bin/busybox", "file", 0o755, data=open("/bin/busybox", "rb").read()),
                       LayerEntry("bin/sh", "symlink", target="busybox")])
    return image_archive(layer, {"User": "65534:65534", "Env": env, "Labels": {"t": uuid.uuid4().hex}},
                         architecture="amd64")


async def test_image_archive_with_wrong_digest_refused(client):
    data, digests = _test_archive(["PATH=/bin"])
    try:
        with pytest.raises(ImageError, match="sha256"):
            load_image_archive(client, data, archive_sha256="sha256:" + "0" * 64,
                               image_id=digests.config_digest)
        with pytest.raises(ImageError, match="image id"):
            load_image_archive(client, data, archive_sha256=digests.archive_sha256,
                               image_id="sha256:" + "1" * 64)
        with pytest.raises(docker.errors.ImageNotFound):
            client.api.inspect_image(digests.config_digest)  # nothing was loaded
        loaded = load_image_archive(client, data, archive_sha256=digests.archive_sha256,
                                    image_id=digests.config_digest)
        assert loaded in digests.image_ids()
    finally:
        for image_id in digests.image_ids():
            try:
                client.api.remove_image(image_id, force=True)
            except docker.errors.NotFound:
                pass


async def test_image_with_ld_preload_refused(engine, client, node):
    data, digests = _test_archive(["PATH=/bin", "LD_PRELOAD=/evil.so"])
    image_id = load_image_archive(client, data, archive_sha256=digests.archive_sha256,
                                  image_id=digests.config_digest)
    try:
        with pytest.raises(ImageError, match="LD_PRELOAD"):
            await prepare_job(engine, SandboxJob(image_id, ("true",)), FAST, node_id=node,
                              agreement_id=AGREEMENT, job_key="ld" + node)
    finally:
        client.api.remove_image(image_id, force=True)


async def test_demo_image_id_is_the_archive_digest(client, image):
    _, digests = build_demo_archive()
    assert image in digests.image_ids()
    assert client.api.inspect_image(image)["Config"]["User"] == "65534:65534"


async def test_io_works_for_an_image_without_io_folders(engine, client, node):
    """The input tar's in/ and out/ are owned by 65534 (tar ownership is kept by the engine)."""
    data, digests = _test_archive(["PATH=/bin"])
    image_id = load_image_archive(client, data, archive_sha256=digests.archive_sha256,
                                  image_id=digests.config_digest)
    try:
        result, logs, _ = await run(engine, image_id, node, "cat /io/in/q > /io/out/a && echo ok",
                                    inputs={"q": b"x"})
        assert result.exit_code == 0 and stdout(logs) == ["ok"]
    finally:
        client.api.remove_image(image_id, force=True)
