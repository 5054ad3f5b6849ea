"""Sandbox benchmark: job start overhead vs bare `docker run`, and the CPU cost of metering.

    .venv/bin/python bench/sandbox.py [--rounds 10] [--jobs 1,10,50] [--window-s 10]

1. Start overhead: from "plan ready" to "container running" (volume + hardened container + inputs
   put + start), against `docker run -d` of the same image and command measured in the same run
   (the CLI returns once the container is running). Target: <= bare + 300 ms.
2. Metering cost: N idle `sleep` jobs metered once a second (cgroup files, 4 CPU reads per sample);
   CPU time of this process (all threads) over a window, per job per second. Target: < 1 % of a core
   per job. The same with the Engine API stats fallback, with dockerd's own CPU shown beside it.
Uses the locally built busybox demo image; nothing is pulled; every container is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `sandbox` package it measures.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import trio  # noqa: E402

from sandbox.engine import Engine, connect, probe_engine  # noqa: E402
from sandbox.images import ensure_demo_image  # noqa: E402
from sandbox.meter import run_meter  # noqa: E402
from sandbox.prepare import prepare_job  # noqa: E402
from sandbox.reaper import reap_orphans  # noqa: E402
from sandbox.runner import open_job  # noqa: E402
from sandbox.spec import EngineFacts, ProviderPolicy, SandboxJob  # noqa: E402

NODE = f"bench-{uuid.uuid4().hex[:8]}"
AGREEMENT = "be" * 32
POLICY = ProviderPolicy(stop_grace_ms=1000)


def dockerd_cpu_s() -> float | None:
    """utime+stime of dockerd (None when it is not visible from here)."""
    try:
        pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()[0]
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (IndexError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_docker_run_ms(image: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        cid = subprocess.run(["docker", "run", "-d", "--network", "none", image, "sleep", "600"],
                             capture_output=True, text=True, check=True).stdout.strip()
        times.append((time.perf_counter() - t) * 1000)
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=True)
    return times


async def sandbox_start_ms(engine: Engine, image: str, facts: EngineFacts, rounds: int) -> list[float]:
    times = []
    spec = SandboxJob(image, ("sleep", "600"), memory_mib=16, cpus_millicores=100)
    for i in range(rounds):
        plan = await prepare_job(engine, spec, POLICY, node_id=NODE, agreement_id=AGREEMENT,
                                 job_key=f"{NODE}-s{i}", facts=facts)
        t = time.perf_counter()  # plan ready
        async with open_job(engine, plan, inputs={"x": b"1"}) as job:
            await job.start()  # returns once the container is running
            times.append((time.perf_counter() - t) * 1000)
            await job.stop()
    return times


async def metering_cost(engine: Engine, image: str, facts: EngineFacts, jobs: int, window_s: float,
                        prefer_files: bool) -> tuple[float, float | None, str]:
    """(process CPU ms per job per second, dockerd CPU ms per job per second, metering source)."""
    spec = SandboxJob(image, ("sleep", "600"), memory_mib=16, cpus_millicores=100)
    sources: list[str] = []
    result: list[tuple[float, float | None]] = []
    async with trio.open_nursery() as nursery:
        ready = trio.Semaphore(0)
        stop = trio.Event()

        async def one(i: int) -> None:
            plan = await prepare_job(engine, spec, POLICY, node_id=NODE, agreement_id=AGREEMENT,
                                     job_key=f"{NODE}-m{jobs}-{i}-{int(prefer_files)}", facts=facts)
            async with open_job(engine, plan) as job:
                await job.start()
                send, receive = trio.open_memory_channel(0)
                async with trio.open_nursery() as inner:
                    inner.start_soon(_drain, receive)
                    sources.append(await inner.start(_meter, job, send, prefer_files))
                    ready.release()
                    await stop.wait()
                    await job.stop()
                    await job.wait()

        for i in range(jobs):
            nursery.start_soon(one, i)
        for _ in range(jobs):
            await ready.acquire()
        await trio.sleep(1.5)  # let the first samples and thread start-up settle
        cpu0, d0, t0 = time.process_time(), dockerd_cpu_s(), time.perf_counter()
        await trio.sleep(window_s)
        cpu1, d1, t1 = time.process_time(), dockerd_cpu_s(), time.perf_counter()
        stop.set()
        per = jobs * (t1 - t0)
        result.append(((cpu1 - cpu0) * 1000 / per,
                       (d1 - d0) * 1000 / per if d0 is not None and d1 is not None else None))
    return result[0][0], result[0][1], sources[0]


async def _meter(job, send, prefer_files, task_status=trio.TASK_STATUS_IGNORED):
    async with send:
        await run_meter(job, send, prefer_files=prefer_files, task_status=task_status)


async def _drain(receive) -> None:
    async for _ in receive:
        pass


async def main(rounds: int, job_counts: list[int], window_s: float) -> None:
    client = connect()
    image = ensure_demo_image(client)
    engine = Engine(client, max_threads=32)
    facts = probe_engine(client)
    version = client.version()
    print(f"engine {version.get('Version')} (API {facts.api_version}), cgroup v{facts.cgroup_version} "
          f"{facts.cgroup_driver}, {os.cpu_count()} CPUs; image {image[:19]}…")
    try:
        bare = await trio.to_thread.run_sync(bare_docker_run_ms, image, rounds)
        ours = await sandbox_start_ms(engine, image, facts, rounds)
        b, o = statistics.median(bare), statistics.median(ours)
        print(f"\nstart overhead, {rounds} rounds, median [min..max] ms:")
        print(f"  docker run -d (CLI)          {b:7.1f} [{min(bare):.1f}..{max(bare):.1f}]")
        print(f"  sandbox plan→running         {o:7.1f} [{min(ours):.1f}..{max(ours):.1f}]")
        print(f"  difference {o - b:+.1f} ms (target <= +300 ms), ratio {o / b:.2f}")
        print(f"\nmetering cost over a {window_s:.0f} s window "
              "(CPU ms per job per second; 10 ms/s = 1 % of a core):")
        cpu0 = time.process_time()
        await trio.sleep(window_s)
        idle = (time.process_time() - cpu0) * 1000 / window_s
        print(f"  (this process with no job: {idle:.2f} ms/s; not subtracted below)")
        for prefer_files in (True, False):
            for jobs in job_counts:
                own, dockerd, source = await metering_cost(engine, image, facts, jobs, window_s,
                                                           prefer_files)
                shown = f"{dockerd:6.2f}" if dockerd is not None else "   n/a"
                print(f"  {source:20s} {jobs:3d} jobs: this process {own:6.2f} ms/job/s "
                      f"({own / 10:.3f} % of a core), dockerd {shown} ms/job/s")
    finally:
        await reap_orphans(engine, NODE)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", default="1,10,50")
    parser.add_argument("--window-s", type=float, default=10.0)
    args = parser.parse_args()
    trio.run(main, args.rounds, [int(n) for n in args.jobs.split(",")], args.window_s)
