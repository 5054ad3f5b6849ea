"""Hole punching and relay figures in the network lab (issue 15): run as root, prints one JSON line.

    .venv/bin/python bench/nat.py [--trials N] [--topology cone|symmetric|two-nats|random-port ...]

For each topology a relay (a ``p2p.host`` node with the HOP, as ``suanli bootstrap`` runs it) sits on the
lab's backbone and a listener behind a NAT keeps a reservation on it; each trial is a fresh dialer
process (a new identity) that connects through the relay and then tries the DCUtR upgrade
(``p2p.relay.dial_circuit`` + ``upgrade_to_direct``, exactly what ``Node.open_stream`` does):

- ``cone``: dialer on the backbone, listener behind a cone NAT;
- ``symmetric``: dialer on the backbone, listener behind ``--random-fully``;
- ``two-nats``: dialer and listener each behind a cone NAT;
- ``random-port``: dialer behind a cone NAT, listener behind ``--random-fully``.

Reported per topology: successes / trials, relayed connect time and relayed -> direct time (p50, p95).
Each process is bounded (``--trial-timeout``); the lab tears everything down on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ("cone", "symmetric", "two-nats", "random-port")


def _node(role: str, ip: str, relay_addr: str, target: str) -> None:
    """One lab process: relay, listener or dialer (runs inside its namespace)."""
    import trio

    from p2p import relay_dial as relaying
    from p2p.host import HostConfig, open_host
    from p2p.identity import generate_key
    from p2p.relay_limits import RelayLimits

    async def main() -> None:
        key = generate_key()
        if role == "relay":
            config = HostConfig(key=key, listen=(f"/ip4/{ip}/tcp/4001",), relay_hop=RelayLimits(), dht_mode="server")
            async with open_host(config) as node:
                print(json.dumps({"addr": node.addrs()[0]}), flush=True)
                await trio.sleep_forever()
        if role == "listener":
            config = HostConfig(key=key, listen=("/ip4/0.0.0.0/tcp/4002",), bootstrap=(relay_addr,), relays=())
            async with open_host(config) as node:
                while not node.relay.held:  # noqa: ASYNC110 - RelayClient has no event; bounded by the caller
                    await trio.sleep(0.1)
                print(json.dumps({"circuit": node.relay.circuit_addrs()[0]}), flush=True)
                await trio.sleep_forever()
        config = HostConfig(key=key, listen=("/ip4/0.0.0.0/tcp/0",), dht_mode="client")
        async with open_host(config) as node:
            from libp2p.peer.id import ID

            pid = ID.from_base58(target.rsplit("/p2p/", 1)[-1])
            t0 = time.monotonic()
            try:
                await relaying.dial_circuit(node, target, pid)
            except Exception as exc:  # reported, counted apart from punch failures
                print(json.dumps({"error": str(exc)[:300]}), flush=True)
                return
            relayed_ms = (time.monotonic() - t0) * 1000
            direct = await relaying.upgrade_to_direct(node, pid)
            print(json.dumps({"relayed_ms": relayed_ms, "direct": direct,
                              "upgrade_ms": node.relay.upgrades_ms[0] if direct else None}), flush=True)

    trio.run(main)


def _json_line(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        buf += chunk
        for line in buf.splitlines():
            if line.startswith(b"{"):
                return json.loads(line)  # type: ignore[no-any-return]
        if proc.poll() is not None and not chunk:
            break
        time.sleep(0.05)
    raise RuntimeError(f"no JSON line within {timeout_s:g} s (exit {proc.poll()})")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run_topology(topology: str, trials: int, trial_timeout_s: float) -> dict[str, object]:
    from netlab import netns

    me = [sys.executable, str(Path(__file__).resolve()), "--role"]
    env_cwd = {"cwd": str(ROOT), "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
    with netns.Lab() as lab:
        relay_host = lab.public_host("relay")
        listener_nat = "symmetric" if topology in ("symmetric", "random-port") else "cone"
        listener = lab.host_in(lab.home("lhome", nat=listener_nat), "listener")
        dialer = (lab.public_host("dialer") if topology in ("cone", "symmetric")
                  else lab.host_in(lab.home("dhome", nat="cone"), "dialer"))
        relay = relay_host.popen([*me, "relay", "--ip", relay_host.ip], **env_cwd)
        relay_addr = str(_json_line(relay, 60)["addr"])
        lst = listener.popen([*me, "listener", "--relay-addr", relay_addr], **env_cwd)
        circuit = str(_json_line(lst, 60)["circuit"])
        relayed, upgraded, failures, errors = [], [], 0, []
        for _ in range(trials):
            proc = dialer.popen([*me, "dialer", "--target", circuit], **env_cwd)
            try:
                result = _json_line(proc, trial_timeout_s)
            except RuntimeError:
                failures += 1
                continue
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            if "error" in result:
                errors.append(str(result["error"]))
                continue
            relayed.append(float(result["relayed_ms"]))  # type: ignore[arg-type]
            if result["direct"]:
                upgraded.append(float(result["upgrade_ms"]))  # type: ignore[arg-type]
        return {"topology": topology, "trials": trials, "direct": len(upgraded), "no_answer": failures,
                "relay_errors": len(errors), "first_error": errors[0] if errors else None,
                "relayed_connect_ms_p50": _pct(relayed, 0.5), "relayed_connect_ms_p95": _pct(relayed, 0.95),
                "relayed_to_direct_ms_p50": _pct(upgraded, 0.5), "relayed_to_direct_ms_p95": _pct(upgraded, 0.95),
                "relayed_to_direct_ms_mean": round(statistics.fmean(upgraded), 1) if upgraded else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--topology", action="append", choices=TOPOLOGIES)
    parser.add_argument("--trial-timeout", type=float, default=30.0)
    parser.add_argument("--role", choices=("relay", "listener", "dialer"), help=argparse.SUPPRESS)
    parser.add_argument("--ip", default="", help=argparse.SUPPRESS)
    parser.add_argument("--relay-addr", default="", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _node(args.role, args.ip, args.relay_addr, args.target)
        return 0
    from netlab import netns

    reason = netns.available()
    if reason is not None:
        print(f"bench/nat.py: {reason}", file=sys.stderr)
        return 2
    for topology in args.topology or TOPOLOGIES:
        print(json.dumps(run_topology(topology, args.trials, args.trial_timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
