"""``suanli agent``: the resident buyer agent (node.agent) that ``suanli run`` hands its jobs to."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

import trio

from p2p.errors import SuanliError

log = logging.getLogger("suanli.agent")


def cmd_agent(args: argparse.Namespace) -> int:
    from node.logsetup import configure

    configure(args.verbose)
    bootstrap = tuple(args.bootstrap or []) or tuple(filter(None, os.environ.get("SUANLI_BOOTSTRAP", "").split(",")))
    if not bootstrap:
        raise SuanliError("give --bootstrap MULTIADDR (or set SUANLI_BOOTSTRAP) to join a network")
    trio.run(_agent, args, bootstrap)
    return 0


async def _agent(args: argparse.Namespace, bootstrap: tuple[str, ...]) -> None:
    from node.agent import AGENT_SOCKET, open_agent
    from node.paths import data_dir
    from p2p.identity import generate_key, load_key, save_key

    home = Path(args.data_dir) if args.data_dir else data_dir()
    home.mkdir(parents=True, exist_ok=True)
    key_path = home / "node.key"
    if key_path.exists():
        key = load_key(key_path)
    else:
        key = generate_key()
        save_key(key, key_path)
        log.info("created key %s (peer id %s)", key_path, key.peer_id)
    listen = ("/ip4/127.0.0.1/tcp/0",) if args.local else ("/ip4/0.0.0.0/tcp/0",)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_agent(key, home, bootstrap, listen) as agent:
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
