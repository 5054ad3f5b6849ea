"""What a job that floods its logs (busybox `yes`) costs the provider, with and without the log rate limit.

    python bench/logflood.py [--seconds 10]

Prints, for each case, the CPU seconds this process (the provider's log pump, with a consumer that
forwards nothing) and dockerd spent, and the bytes that reached the consumer. Needs a Docker engine.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import uuid

# bench/sandbox.py would shadow the `sandbox` package when this runs as a script from bench/.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import trio  # noqa: E402

from sandbox.engine import Engine, connect, probe_engine  # noqa: E402
from sandbox.images import ensure_demo_image  # noqa: E402
from sandbox.jobio import LogRateLimit  # noqa: E402
from sandbox.plan import plan_container  # noqa: E402
from sandbox.runner import open_job  # noqa: E402
from sandbox.spec import ProviderPolicy, SandboxJob  # noqa: E402


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_pid(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dockerd() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().strip() == "dockerd":
                        return int(entry)
            except OSError:
                continue
    return None


async def flood(engine: Engine, image: str, seconds: int, limit: LogRateLimit | None) -> tuple[float, float, int]:
    facts = await engine.call(probe_engine, engine.client)
    spec = SandboxJob(image, ("sh", "-c", f"timeout {seconds} yes; true"), max_duration_ms=(seconds + 30) * 1000)
    plan = plan_container(spec, ProviderPolicy(), facts, image_env=[], free_gpus=(), node_id="bench-logflood",
                          agreement_id="bf" * 32, job_key=uuid.uuid4().hex[:12])
    dockerd = _dockerd()
    received = 0
    send, receive = trio.open_memory_channel(256)
    cpu0, d0 = _cpu_self(), _cpu_pid(dockerd) if dockerd else 0.0
    async with open_job(engine, plan) as job:
        await job.start()
        async with trio.open_nursery() as nursery:
            async def pump() -> None:
                async with send:
                    await job.stream_logs(send, limit)
            nursery.start_soon(pump)
            async for line in receive:
                received += len(line.text) + 1
        await job.wait()
    return _cpu_self() - cpu0, (_cpu_pid(dockerd) - d0) if dockerd else float("nan"), received


async def main(seconds: int) -> None:
    client = connect()
    engine = Engine(client)
    image = ensure_demo_image(client)
    for label, limit in (("no limit", None), ("64 KiB/s, burst 256 KiB", LogRateLimit(64 << 10, 256 << 10))):
        mine, dockerd, got = await flood(engine, image, seconds, limit)
        dropped = f", {limit.dropped_bytes} bytes dropped" if limit else ""
        print(f"{label:>26}: provider CPU {mine:5.2f} s, dockerd CPU {dockerd:5.2f} s in {seconds} s; "
              f"{got} bytes delivered{dropped}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    trio.run(main, parser.parse_args().seconds)
