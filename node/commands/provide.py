"""``suanli provide``: the operator's daemon, and ``suanli status``: what it is doing."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import trio

from node.config import load_config, write_example
from node.control import SOCKET_NAME, query, serve_control
from node.paths import data_dir

log = logging.getLogger("suanli.provide")


def cmd_provide(args: argparse.Namespace) -> int:
    if args.init_config:
        path = write_example(args.init_config)
        print(f"wrote an example configuration to {path}; edit prices and limits, then run "
              f"`suanli provide --config {path}`")
        return 0
    if not args.config:
        print("suanli: error: give --config FILE (or --init-config FILE to write an example)", file=sys.stderr)
        return 2
    from node.logsetup import configure

    configure(args.verbose)
    config = load_config(args.config)
    trio.run(_provide, config, args.json)
    return 0


async def _provide(config, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from node.dashboard.serve import serve_dashboard
    from node.overlay import provider_overlay
    from node.provider import ProviderSetup, check_capacity, machine_cpu_millis, machine_memory_mib, open_provider
    from p2p.identity import load_or_create_key
    from p2p.listen import parse_listen_addrs, try_bind
    from sandbox.spec import ProviderPolicy

    # Issue 17 items 8 and 9, before a key or a directory is made (open_provider and open_host check again).
    for addr in parse_listen_addrs(config.listen):
        try_bind(addr)
    check_capacity(config.cpu_millis, config.memory_mib, machine_cpu_millis(), machine_memory_mib())
    key, created = load_or_create_key(config.key_path)
    if created:
        log.info("created key %s (peer id %s)", config.key_path, key.peer_id)
    setup = ProviderSetup(key=key, data_dir=config.data_dir, terms=config.terms, listen=config.listen,
                          bootstrap=config.bootstrap, cpu_millis=config.cpu_millis, memory_mib=config.memory_mib,
                          disk_mib=config.disk_mib, start_timeout_s=config.start_window_s, owner=config.owner,
                          images=config.images,
                          policy=replace(ProviderPolicy(), runtime=config.runtime, pids_limit=config.pids_limit,
                                         log_rate_bytes_per_s=config.log_rate_bytes_per_s,
                                         log_burst_bytes=config.log_burst_bytes))
    overlay = provider_overlay()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_provider(setup, handlers=overlay.handlers, topics=overlay.topics,
                                 announce=overlay.announce) as runtime:
            overlay.attach(runtime)
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_control, config.data_dir / SOCKET_NAME, runtime.status)
                dashboard = await nursery.start(serve_dashboard, config.data_dir, config.dashboard_port, lambda: {
                    "reachability": runtime.node.reachability, **runtime.status()}
                ) if config.dashboard_enabled else None
                await nursery.start(overlay.serve, runtime)
                ready = {"event": "ready", "peer_id": key.peer_id, "addrs": runtime.node.addrs(),
                         "data_dir": str(config.data_dir), "gpus": len(runtime.gpus),
                         "cpu_millis": runtime.ledger.cpu_millis, "memory_mib": runtime.ledger.memory_mib,
                         "dashboard": dashboard}
                if as_json:
                    print(json.dumps(ready), flush=True)
                else:
                    print(f"providing as {key.peer_id}", flush=True)
                    for addr in runtime.node.addrs():
                        print(f"  listening on {addr}", flush=True)
                    if dashboard:
                        print(f"  dashboard on {dashboard} (`suanli dashboard` prints it with the token)", flush=True)
                async for signum in signals:
                    log.info("%s: stopping: running jobs are stopped, each with a final receipt "
                             "(provider_shutdown), then the offer is withdrawn", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    if as_json:
        print(json.dumps({"event": "stopped", "peer_id": key.peer_id}), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    path = data_dir(args.data_dir) / SOCKET_NAME
    reply = query(path)
    status = reply["status"]
    if args.json:
        return _write(json.dumps(status, indent=1) + "\n")
    lines = [f"peer id    {status['peer_id']}"]
    lines.append(f"reachable  {status.get('reachability', 'unknown')}")
    lines += [f"address    {addr}" for addr in status["addrs"]]
    offer = status.get("offer")
    if offer:
        gpus = ", ".join(offer["gpus"]) or "none"
        lines.append(f"offer      seq {offer['seq']}: GPUs {gpus} ({offer['free_gpus']} free), "
                     f"CPU {offer['free_cpu_millis'] / 1000:g}/{offer['cpu_millis'] / 1000:g} cores free, "
                     f"{offer['memory_mib']} MiB")
    if (owner := status.get("owner")) is not None:  # issue 18: why nothing is free while the owner is back
        lines.append(f"owner      {owner['state']}" + (f": {owner['reason']}" if owner["reason"] else ""))
    lines.append(f"earned     {status['earned_micros']} micro-credits")
    lines.append(f"jobs       {len(status['jobs'])} running")
    for job in status["jobs"]:
        lines.append(f"  {job['agreement_id'][:16]}  buyer {job['buyer']}  {job['state']}  {job['seconds']:.1f} s  "
                     f"{job['amount_micros']} micro-credits ({job['countersigned_micros']} countersigned)")
    lines += [f"error      {err}" for err in status["last_errors"]]
    return _write("".join(line + "\n" for line in lines))


def _write(text: str) -> int:
    """Print ``text``; a reader that stops early (``suanli status | head``) ends the command quietly, as it
    ends ``ls``, instead of a BrokenPipeError traceback (issue 17 item 11)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe (library/signal, "Note on SIGPIPE"): point stdout at /dev/null so that the flush
        # at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
