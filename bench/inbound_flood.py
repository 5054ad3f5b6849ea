"""What anonymous peers' half-sent frames cost a node (issue 13 M1), with and without inbound limits.

    python bench/inbound_flood.py [--identities 6] [--streams 250] [--limits default|none]

Starts a target host in a child process (an echo protocol under ``serve_framed``), then attacks it
from this process: each identity opens ``--streams`` streams (25 at a time) and writes 255 KiB of a
256 KiB frame into each, then holds them. Prints the target's RSS before and at its peak, and how
many streams it admitted and reset. ``--limits none`` sets every limit to 1,000,000 (as before
p2p.limits).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

# bench/sandbox.py would shadow the `sandbox` package when this runs as a script from bench/.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

PROTOCOL = "/suanli/bench/echo/1"
FRAME = 256 * 1024
SENT = 255 * 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _target(limits_name: str, run_s: float) -> None:
    from p2p.framing import FramedStream, serve_framed
    from p2p.host import open_host
    from p2p.limits import InboundLimits
    from p2p.testing import loopback_config

    async def echo(framed: FramedStream) -> None:
        async for frame in framed.frames():
            await framed.send_frame(frame)

    limits = InboundLimits() if limits_name == "default" else InboundLimits(*(1_000_000,) * 5)
    handler = serve_framed(echo, protocol=PROTOCOL, stream_budget_s=run_s)
    async with open_host(loopback_config(handlers={PROTOCOL: handler}, limits=limits)) as node:
        print("ADDR", node.addrs()[0], flush=True)
        peak = 0.0
        with trio.move_on_after(run_s):
            while True:
                peak = max(peak, _rss_mib())
                print(f"STAT {_rss_mib():.0f} {peak:.0f} {node.gate.streams()} {node.gate.refused_streams}",
                      flush=True)
                await trio.sleep(0.25)


def _start_target(limits_name: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--target", limits_name],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for _ in range(1000):  # bounded: the target prints its address first
        line = child.stdout.readline()
        if not line:
            break
        if line.startswith("ADDR"):
            return child, line.split()[1]
    child.kill()
    raise SystemExit("the target did not start")


async def _attack(args: argparse.Namespace, child: subprocess.Popen[str], addr: str) -> None:
    from p2p.framing import encode_varint
    from p2p.host import open_host
    from p2p.testing import loopback_config

    try:
        target = addr.split("/p2p/")[1]
        stats: list[list[str]] = []

        async def read_stats() -> None:
            while line := await trio.to_thread.run_sync(child.stdout.readline):  # type: ignore[union-attr]
                if line.startswith("STAT"):
                    stats.append(line.split()[1:])

        async def attacker() -> None:
            async with open_host(loopback_config(bootstrap=(addr,))) as node:
                slots = trio.CapacityLimiter(25)

                async def one() -> None:
                    async with slots:
                        try:
                            stream = await node.open_stream(target, PROTOCOL)
                            await stream.write(encode_varint(FRAME) + b"x" * SENT)
                        except Exception:  # reset by the target: that is the point
                            pass

                with trio.move_on_after(120):
                    async with trio.open_nursery() as nursery:
                        for _ in range(args.streams):
                            nursery.start_soon(one)
                await trio.sleep(3)  # hold what was admitted while the target is measured

        started = time.monotonic()
        async with trio.open_nursery() as top:
            top.start_soon(read_stats)
            await trio.sleep(1.5)
            before = stats[-1]
            async with trio.open_nursery() as nursery:
                for _ in range(args.identities):
                    nursery.start_soon(attacker)
            after = stats[-1]
            top.cancel_scope.cancel()
        print(f"limits={args.limits}: {args.identities} identities x {args.streams} streams x {SENT // 1024} KiB "
              f"of a {FRAME // 1024} KiB frame, {time.monotonic() - started:.0f} s")
        print(f"  target RSS {before[0]} MiB before, {after[1]} MiB at peak "
              f"(+{float(after[1]) - float(before[0]):.0f} MiB); {max(int(s[2]) for s in stats)} streams held "
              f"at most, {after[3]} reset")
    finally:
        child.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=6)
    ap.add_argument("--streams", type=int, default=250)
    ap.add_argument("--limits", choices=("default", "none"), default="default")
    ap.add_argument("--target", choices=("default", "none"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.target:
        trio.run(_target, args.target, 600.0)
    else:
        child, addr = _start_target(args.limits)
        try:
            trio.run(_attack, args, child, addr)
        finally:
            child.wait()


if __name__ == "__main__":
    main()
