"""``suanli agent``: the resident buyer agent (node.agent) that ``suanli run`` hands its jobs to."""

from __future__ import annotations

import argparse
import json
import logging
import signal

import trio

log = logging.getLogger("suanli.agent")


def cmd_agent(args: argparse.Namespace) -> int:
    from node.logsetup import configure

    configure(args.verbose)
    from node.paths import bootstrap_peers

    trio.run(_agent, args, bootstrap_peers(args.bootstrap))
    return 0


async def _agent(args: argparse.Namespace, bootstrap: tuple[str, ...]) -> None:
    from node.agent import open_agent
    from node.paths import AGENT_SOCKET, client_listen, data_dir
    from p2p.identity import load_or_create_key

    home = data_dir(args.data_dir)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)  # L3: the data directory is private
    key, created = load_or_create_key(home / "node.key")
    if created:
        log.info("created key %s (peer id %s)", home / "node.key", key.peer_id)
    listen = client_listen(args.local)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        port = None if args.dashboard_port < 0 else args.dashboard_port  # issue 20: the buyer's dashboard
        async with open_agent(key, home, bootstrap, listen, dashboard_port=port) as agent:
            ready = {"event": "ready", "socket": str(home / AGENT_SOCKET), **agent.status()}
            if args.json:
                print(json.dumps(ready), flush=True)
            else:
                print(f"buyer agent {key.peer_id}: {ready['offers']} offer(s) known; "
                      f"`suanli run --data-dir {home}` now starts jobs through {ready['socket']}", flush=True)
            async for signum in signals:
                log.info("%s: cancelling running jobs, then stopping", signal.Signals(signum).name)
                break
    if args.json:
        print(json.dumps({"event": "stopped", "peer_id": key.peer_id}), flush=True)
