"""``suanli bootstrap`` (a stable entry point) and ``suanli offers`` (the buyer's view of the market)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time

import trio

log = logging.getLogger("suanli.network")


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from bootstrap.node import DEFAULT_LISTEN
    from node.logsetup import configure
    from p2p import relay_limits
    from p2p.errors import ConfigError, SuanliError
    from p2p.errors import leaves as errors_leaves
    from p2p.identity import load_key
    from p2p.listen import parse_listen_addrs

    configure(args.verbose)
    key = load_key(args.key)
    parse_listen_addrs(args.listen or DEFAULT_LISTEN)  # issue 17 item 8: one line before anything starts
    try:
        args.relay = relay_limits.limits_from(args)
    except ValueError as exc:
        raise ConfigError(str(exc), key="relay", value=None) from None
    try:
        trio.run(_bootstrap, key, args)
    except BaseExceptionGroup as group:  # an error while starting comes out of the nursery as a group
        leaves = errors_leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], SuanliError):
            raise leaves[0] from None
        raise
    return 0


async def _bootstrap(key, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    from bootstrap.node import DEFAULT_LISTEN, run_bootstrap
    from market.records import Offer

    listen = tuple(args.listen or DEFAULT_LISTEN)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            boot = await nursery.start(lambda task_status: run_bootstrap(
                key, listen, offer_cls=Offer, bootstrap=tuple(args.peer or ()), relay=args.relay,
                task_status=task_status))
            if args.json:
                print(json.dumps({"event": "ready", **boot.status()}), flush=True)
            else:
                print(f"bootstrap {key.peer_id}", flush=True)
                for addr in boot.node.addrs():
                    print(f"  listening on {addr}", flush=True)
                if args.relay is not None:
                    print(f"  circuit relay: {args.relay.reservations} reservations, {args.relay.circuits} circuits "
                          f"of at most {args.relay.circuit_bytes} bytes and {args.relay.circuit_duration_s} s",
                          flush=True)
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                status = boot.status()
                nursery.cancel_scope.cancel()
                break
    if args.json:
        print(json.dumps({"event": "stopped", **status}), flush=True)


def cmd_offers(args: argparse.Namespace) -> int:
    from node.logsetup import configure

    configure(args.verbose)
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    return trio.run(_offers, args)


async def _offers(args: argparse.Namespace) -> int:
    from market.matching import JobRequest
    from market.records import ResourceRequest
    from node.overlay import BuyerOverlay
    from node.paths import bootstrap_peers, client_listen
    from p2p.host import HostConfig, open_host
    from p2p.identity import generate_key, peer_id_from_public

    bootstrap = bootstrap_peers(args.bootstrap)
    overlay = BuyerOverlay()
    config = HostConfig(key=generate_key(), listen=client_listen(args.local), bootstrap=bootstrap, dht_mode="client",
                        topics=overlay.topics)
    everything = JobRequest(ResourceRequest(0, None, 0, None, 0, 0), 0, 0, "")
    async with open_host(config) as node:
        offers = await overlay.discover(node, everything, wait_s=args.wait)
    rows = []
    for signed in sorted(offers, key=lambda s: s.record.provider):
        o = signed.record
        rows.append({
            "provider": peer_id_from_public(o.provider), "offer_id": signed.record_id.hex(), "seq": o.seq,
            "gpus": [g.model for g in o.capacity.gpus], "free_gpus": len(o.free.gpus),
            "gpu_memory_mib": [g.memory_mib for g in o.capacity.gpus],
            "cpu_cores": o.capacity.cpu_millis / 1000, "free_cpu_cores": o.free.cpu_millis / 1000,
            "memory_mib": o.capacity.memory_mib, "free_memory_mib": o.free.memory_mib,
            "price": {"gpu_micros_per_s": dict(o.prices.gpu_micros_per_s),
                      "cpu_core_micros_per_s": o.prices.cpu_core_micros_per_s,
                      "memory_gib_micros_per_s": o.prices.memory_gib_micros_per_s},
            "max_duration_s": o.limits.max_duration_s, "expires_at_ms": o.expires_at_ms, "addrs": list(o.addrs)})
    if args.json:
        print(json.dumps({"offers": rows}))
        return 0
    if not rows:
        print("no offers heard (is a provider running on this network?)")
        return 0
    now = time.time()
    print(f"{'provider':<54} {'GPUs':<26} {'CPU':>9} {'memory':>12} {'price/s (gpu, core, GiB)':<26} expires")
    for r in rows:
        gpus = ", ".join(r["gpus"]) or "-"
        gpu_price = ",".join(str(v) for v in r["price"]["gpu_micros_per_s"].values()) or "-"
        price = f"{gpu_price}, {r['price']['cpu_core_micros_per_s']}, {r['price']['memory_gib_micros_per_s']}"
        print(f"{r['provider']:<54} {gpus[:26]:<26} {r['free_cpu_cores']:>4g}/{r['cpu_cores']:<4g} "
              f"{r['free_memory_mib']:>5}/{r['memory_mib']:<6} {price:<26} in {r['expires_at_ms'] / 1000 - now:.0f} s")
    return 0
