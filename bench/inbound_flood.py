"""What anonymous peers' half-sent frames cost a node (issue 13 M1), with and without inbound limits.

    python bench/inbound_flood.py [--identities 6] [--streams 250] [--limits default|none]
    python bench/inbound_flood.py --mode upload [--identities 6] [--streams 25] [--upload-mib 8] [--limits ...]

Starts a target host in a child process (an echo protocol under ``serve_framed``), then attacks it
from this process: each identity opens ``--streams`` streams (25 at a time) and writes 255 KiB of a
256 KiB frame into each, then holds them. Prints the target's RSS before and at its peak, and how
many streams it admitted and reset. ``--limits none`` sets every limit to 1,000,000 (as before
p2p.limits).

``--mode upload`` attacks the Yamux window instead (review of issue 13 M1): the target reads the first
``--upload-mib`` MiB of each stream at once, as an upload does while the disk keeps up, then stops
reading, as it does while the disk is busy; the attacker keeps writing within flow control until the
window is full. py-libp2p's auto-tuning grew that window while the reads kept up (to 16 MiB at most);
p2p.workarounds caps it at p2p.limits.YAMUX_WINDOW_BYTES.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

# bench/sandbox.py would shadow the `sandbox` package when this runs as a script from bench/.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

PROTOCOL = "/suanli/bench/echo/1"
UPLOAD = "/suanli/bench/upload/1"
FRAME = 256 * 1024
SENT = 255 * 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _target(limits_name: str, run_s: float, upload_mib: int) -> None:
    from p2p.framing import FramedStream, serve_framed
    from p2p.host import open_host
    from p2p.limits import InboundLimits
    from p2p.testing import loopback_config

    async def echo(framed: FramedStream) -> None:
        async for frame in framed.frames():
            await framed.send_frame(frame)

    window_peak = [0]  # the largest receive window an upload stream reached

    async def upload(stream: Any) -> None:
        got = 0
        while got < upload_mib * 2**20:
            data = await stream.read(65536)
            if not data:
                return
            got += len(data)
            window_peak[0] = max(window_peak[0], stream.muxed_stream.target_recv_window)
        await trio.sleep(run_s)  # the disk is busy: nothing more is read

    limits = InboundLimits() if limits_name == "default" else InboundLimits(*(1_000_000,) * 5)
    handler = serve_framed(echo, protocol=PROTOCOL, stream_budget_s=run_s)
    handlers = {PROTOCOL: handler, UPLOAD: upload}
    async with open_host(loopback_config(handlers=handlers, limits=limits)) as node:
        print("ADDR", node.addrs()[0], flush=True)
        peak = 0.0
        with trio.move_on_after(run_s):
            while True:
                peak = max(peak, _rss_mib())
                print(f"STAT {_rss_mib():.0f} {peak:.0f} {node.gate.streams()} {node.gate.refused_streams} "
                      f"{window_peak[0]}", flush=True)
                await trio.sleep(0.25)


def _start_target(limits_name: str, upload_mib: int) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--target", limits_name,
                              "--upload-mib", str(upload_mib)],
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
                            if args.mode == "upload":
                                stream = await node.open_stream(target, UPLOAD)
                                with trio.move_on_after(10):  # until the target's window is full
                                    while True:
                                        await stream.write(b"x" * 2**20)
                                return
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
        what = (f"{args.upload_mib} MiB read at once, then a stalled reader's window filled" if args.mode == "upload"
                else f"{SENT // 1024} KiB of a {FRAME // 1024} KiB frame")
        print(f"limits={args.limits}: {args.identities} identities x {args.streams} streams x {what}, "
              f"{time.monotonic() - started:.0f} s")
        print(f"  target RSS {before[0]} MiB before, {after[1]} MiB at peak "
              f"(+{float(after[1]) - float(before[0]):.0f} MiB); {max(int(s[2]) for s in stats)} streams held "
              f"at most, {after[3]} reset")
        if args.mode == "upload":
            print(f"  largest receive window of an upload stream: {int(after[4]) // 1024} KiB")
    finally:
        child.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=6)
    ap.add_argument("--streams", type=int, default=250)
    ap.add_argument("--limits", choices=("default", "none"), default="default")
    ap.add_argument("--mode", choices=("frames", "upload"), default="frames")
    ap.add_argument("--upload-mib", type=int, default=8, help="what the target reads of each upload at once")
    ap.add_argument("--target", choices=("default", "none"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.target:
        trio.run(_target, args.target, 600.0, args.upload_mib)
    else:
        child, addr = _start_target(args.limits, args.upload_mib)
        try:
            trio.run(_attack, args, child, addr)
        finally:
            child.wait()


if __name__ == "__main__":
    main()
