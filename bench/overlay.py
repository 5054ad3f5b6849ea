"""Overlay benchmark: N node processes and one bootstrap on 127.0.0.1 (issue 3).

    .venv/bin/python bench/overlay.py [--nodes 10,25,50] [--rounds 5] [--idle-s 30] [--churn 1100]

Per N it reports: time until every routing table holds >= k peers (k = min(20, N)); offer propagation
latency from publish to delivery at every other node (p50/p95/p99 over all receivers and rounds, one
publish a second); DHT find_providers latency (every node, key "any"); RSS per idle node and CPU per
node per idle minute (from /proc); and the connections the bootstrap accepted over its life after a
churn of short-lived connections (it must keep accepting past 1,000).

Each node is its own OS process (``bench/overlay.py _worker``), driven over stdin/stdout JSON lines.
Nodes use the real stack (``p2p.host.open_host``, ``p2p.gossip``, ``p2p.dht``, ``bootstrap.node``);
the gossiped record is a bench record of about an offer's size, since ``p2p`` is generic over it.
The multi-process numbers share 2 cores, so per-node CPU carries over to production, the tails don't.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: keep bench/ from shadowing packages

import trio  # noqa: E402

from p2p.records import U64, PublicKey, Record, record  # noqa: E402

PY = sys.executable
HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


@record("bench-offer", 1)
@dataclass(frozen=True)
class BenchOffer(Record):
    provider: PublicKey
    seq: U64
    created_at_ms: U64
    expires_at_ms: U64
    pad: bytes  # about the size of a real offer with two GPUs
    SIGNERS = (("provider", "provider"),)


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --- worker -------------------------------------------------------------------------------------
async def worker(role: str, boot_addr: str) -> None:
    from bootstrap.node import run_bootstrap
    from p2p import dht
    from p2p.envelope import sign_record
    from p2p.gossip import OfferLedger, offer_feed, offer_topics, publish_offer
    from p2p.host import HostConfig, open_host
    from p2p.identity import generate_key
    from p2p.offer_query import offer_handler
    from p2p.testing import loopback_config

    listen = ("/ip4/127.0.0.1/tcp/0",)
    stdin = trio.lowlevel.FdStream(os.dup(0))

    async def commands():
        buf = b""
        while True:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode().split()

    if role == "boot":
        async with trio.open_nursery() as nursery:
            boot = await nursery.start(lambda task_status: run_bootstrap(
                generate_key(), listen, offer_cls=BenchOffer, task_status=task_status))
            emit(ev="ready", addrs=boot.node.addrs(), peer_id=boot.node.peer_id)
            async for cmd in commands():
                if cmd[0] == "status":
                    emit(ev="status", **boot.status())
            nursery.cancel_scope.cancel()
        return

    if role == "churn":
        from contextlib import AsyncExitStack

        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        async for cmd in commands():
            total = int(cmd[1])
            info = info_from_p2p_addr(Multiaddr(boot_addr))
            done, failed = [0], [0]
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(open_host(loopback_config())) for _ in range(8)]

                async def cycle(client, n, info=info, done=done, failed=failed):
                    for _ in range(n):
                        try:
                            await client.connect_info(info)
                            await client.host.disconnect(info.peer_id)
                            done[0] += 1
                        except Exception:
                            failed[0] += 1

                async with trio.open_nursery() as nursery:
                    for c in clients:
                        nursery.start_soon(cycle, c, total // len(clients) + 1)
                async with open_host(loopback_config(bootstrap=(boot_addr,))) as late:
                    ok_after = info.peer_id.to_base58() in late.connected_peers()
            emit(ev="churned", done=done[0], failed=failed[0], new_peer_ok=ok_after)
        return

    key = generate_key()
    ledger = OfferLedger(BenchOffer)
    current = [None]
    config = HostConfig(key=key, listen=listen, bootstrap=(boot_addr,), topics=offer_topics(ledger),
                        handlers={"/suanli/offer/1.0.0": offer_handler(lambda: current[0])},
                        routing_refresh_s=60.0)
    async with open_host(config) as node:
        emit(ev="ready", peer_id=node.peer_id)

        async def report_rt():
            last = -1
            while True:
                size = dht.routing_table_size(node)
                if size != last:
                    emit(ev="rt", size=size)
                    last = size
                await trio.sleep(0.25)

        async def deliveries():
            async for signed in offer_feed(node, ledger):
                emit(ev="offer", provider=signed.record.provider.hex(), seq=signed.record.seq,
                     t_ns=time.time_ns())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_rt)
            nursery.start_soon(deliveries)
            await dht.provide(node, ["any"])
            emit(ev="provided")
            async for cmd in commands():
                if cmd[0] == "provide":  # again, once the routing table is full (as providers do
                    await dht.provide(node, ["any"])  # with every offer announcement)
                    emit(ev="provided")
                elif cmd[0] == "publish":
                    now = wall_ms()
                    signed = sign_record(BenchOffer(key.public, int(cmd[1]), now, now + 120_000, bytes(900)), key)
                    current[0] = signed
                    t = time.time_ns()
                    await publish_offer(node, signed)
                    emit(ev="published", seq=int(cmd[1]), provider=key.public.hex(), t_ns=t)
                elif cmd[0] == "find":
                    t0 = time.perf_counter()
                    found = await dht.find_providers(node, "any")
                    emit(ev="found", n=len(found), ms=(time.perf_counter() - t0) * 1000)
            nursery.cancel_scope.cancel()


# --- controller ---------------------------------------------------------------------------------
class Proc:
    def __init__(self, proc: trio.Process, name: str) -> None:
        self.proc, self.name = proc, name
        self.events: list[dict] = []
        self.changed = trio.Event()

    async def read(self) -> None:
        buf = b""
        while True:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    continue
                self.changed.set()
                self.changed = trio.Event()

    async def send(self, line: str) -> None:
        await self.proc.stdin.send_all((line + "\n").encode())

    def last(self, ev: str) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("ev") == ev), None)

    def all(self, ev: str) -> list[dict]:
        return [e for e in self.events if e.get("ev") == ev]


async def wait_for(pred, timeout_s: float) -> bool:
    with trio.move_on_after(timeout_s):
        while not pred():  # noqa: ASYNC110 - polling other processes' output
            await trio.sleep(0.05)
        return True
    return False


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of a process from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def spawn(nursery: trio.Nursery, role: str, boot_addr: str, name: str) -> Proc:
    proc = await trio.lowlevel.open_process(
        [PY, HERE, "_worker", role, boot_addr], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    p = Proc(proc, name)
    nursery.start_soon(p.read)
    return p


async def run_one(n: int, rounds: int, idle_s: float, churn: int) -> dict:
    result: dict = {"N": n}
    async with trio.open_nursery() as nursery:
        boot = await spawn(nursery, "boot", "-", "boot")
        await wait_for(lambda: boot.last("ready"), 60)
        boot_addr = boot.last("ready")["addrs"][0]
        t0 = time.monotonic()
        nodes = [await spawn(nursery, "node", boot_addr, f"n{i}") for i in range(n)]
        if not await wait_for(lambda: all(p.last("provided") for p in nodes), 60 + 3 * n):
            result["error"] = "nodes did not start"
        result["start_s"] = round(time.monotonic() - t0, 1)
        k = min(20, n)
        t1 = time.monotonic()
        full = await wait_for(lambda: all((p.last("rt") or {}).get("size", 0) >= k for p in nodes), 120)
        sizes = sorted((p.last("rt") or {}).get("size", 0) for p in nodes)
        result["rt_k"] = k
        result["rt_full_s"] = round(time.monotonic() - t1, 1) if full else None
        result["rt_min_median"] = (sizes[0], sizes[len(sizes) // 2])
        for p in nodes:
            await p.send("provide")
        await wait_for(lambda: all(len(p.all("provided")) >= 2 for p in nodes), 120)

        lat: list[float] = []
        delivered = 0
        for r in range(rounds):
            pub = nodes[r % n]
            seq = r + 1
            await pub.send(f"publish {seq}")
            await wait_for(lambda pub=pub, seq=seq: any(e["seq"] == seq for e in pub.all("published")), 10)
            sent = next(e for e in pub.all("published") if e["seq"] == seq)
            others = [p for p in nodes if p is not pub]

            def got(p, sent=sent, seq=seq):
                return any(e["seq"] == seq and e["provider"] == sent["provider"] for e in p.all("offer"))
            await wait_for(lambda others=others, got=got: all(got(p) for p in others), 20)
            for p in others:
                e = next((e for e in p.all("offer") if e["seq"] == seq and e["provider"] == sent["provider"]), None)
                if e is not None:
                    delivered += 1
                    lat.append((e["t_ns"] - sent["t_ns"]) / 1e6)
            await trio.sleep(1.0)
        result["delivered"] = f"{delivered}/{rounds * (n - 1)}"
        result["prop_ms_p50_p95_p99"] = tuple(round(pct(lat, q)) for q in (50, 95, 99))

        for p in nodes:  # one buyer after another, as buyers arrive
            await p.send("find")
            await wait_for(lambda p=p: p.last("found"), 60)
        finds = [p.last("found") for p in nodes if p.last("found")]
        result["find_ms_p50_p95"] = tuple(round(pct([f["ms"] for f in finds], q)) for q in (50, 95))
        result["find_found_min"] = min((f["n"] for f in finds), default=0)

        await trio.sleep(2)
        before = {p.proc.pid: proc_stats(p.proc.pid) for p in nodes}
        await trio.sleep(idle_s)
        after = {p.proc.pid: proc_stats(p.proc.pid) for p in nodes}
        cpu_min = [(after[pid][0] - before[pid][0]) * 60 / idle_s for pid in before]
        rss = [after[pid][1] / 1024 for pid in after]
        result["idle_rss_mb_median_max"] = (round(statistics.median(rss)), round(max(rss)))
        result["idle_cpu_s_per_min_median_max"] = (round(statistics.median(cpu_min), 2), round(max(cpu_min), 2))

        if churn:
            churner = await spawn(nursery, "churn", boot_addr, "churn")
            await churner.send(f"churn {churn}")
            await wait_for(lambda: churner.last("churned"), 600)
            result["churn"] = churner.last("churned")
        await boot.send("status")
        await wait_for(lambda: boot.last("status"), 10)
        status = boot.last("status") or {}
        result["boot_inbound_total"] = status.get("inbound_total")
        result["boot_rss_mb"] = round(proc_stats(boot.proc.pid)[1] / 1024)

        everyone = [boot, *nodes] + ([churner] if churn else [])
        for p in everyone:
            await p.proc.stdin.aclose()  # EOF on stdin: each worker leaves open_host and exits
        with trio.move_on_after(30):
            for p in everyone:
                await p.proc.wait()
        for p in everyone:
            if p.proc.returncode is None:
                p.proc.kill()
        nursery.cancel_scope.cancel()
    return result


async def main(args: argparse.Namespace) -> None:
    for n in [int(x) for x in args.nodes.split(",")]:
        res = await run_one(n, args.rounds, args.idle_s, args.churn)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        trio.run(worker, sys.argv[2], sys.argv[3])
    else:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--nodes", default="10,25,50")
        ap.add_argument("--rounds", type=int, default=5)
        ap.add_argument("--idle-s", type=float, default=30.0)
        ap.add_argument("--churn", type=int, default=1100)
        trio.run(main, ap.parse_args())
