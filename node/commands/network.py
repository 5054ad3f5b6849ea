"""``suanli bootstrap`` (a stable entry point) and ``suanli offers`` (the buyer's view of the market).

Rule 1 (issue 19): ``suanli offers --image IMAGE`` lists only the offers whose provider holds that image,
matched by digest (a pinned local id ``sha256:<64 hex>`` or a registry image ``REGISTRY/REPO@sha256:<64
hex>``, market.matching Rule 4); a value that pins nothing is one line and exit code 2, before any network,
with the words ``suanli run --image`` uses. Each row names the images its offer holds (``sha256:<hex>``)
and the offer's availability (``window_end_ms``, None: no scheduled end; ``notice_ms``; ``preemptible``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from collections.abc import Iterable, Sequence
from typing import Any

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
    from p2p.market_records import Offer

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

    args.image_digest = wanted_image(getattr(args, "image", None))  # Rule 1: before any network
    configure(args.verbose)
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    return trio.run(_offers, args)


async def _offers(args: argparse.Namespace) -> int:
    from market.matching import JobRequest
    from node.overlay import BuyerOverlay
    from node.paths import bootstrap_peers, client_listen
    from p2p.host import HostConfig, open_host
    from p2p.identity import generate_key
    from p2p.market_records import ResourceRequest

    bootstrap = bootstrap_peers(args.bootstrap)
    overlay = BuyerOverlay()
    config = HostConfig(key=generate_key(), listen=client_listen(args.local), bootstrap=bootstrap, dht_mode="client",
                        topics=overlay.topics)
    everything = JobRequest(ResourceRequest(0, None, 0, None, 0, 0), 0, 0, "")
    async with open_host(config) as node:
        offers = await overlay.discover(node, everything, wait_s=args.wait)
    rows = offer_rows(offers, args.image_digest)
    if args.json:
        print(json.dumps({"offers": rows}))
        return 0
    if not rows:
        if args.image_digest is not None and offers:
            print(f"no provider of the {len(offers)} heard holds {args.image}")
        else:
            print("no offers heard (is a provider running on this network?)")
        return 0
    now = time.time()
    print(f"{'provider':<54} {'GPUs':<26} {'CPU':>9} {'memory':>12} {'price/s (gpu, core, GiB)':<26} expires")
    for r in rows:
        gpus = ", ".join(r["gpus"]) or "-"
        gpu_price = ",".join(str(v) for v in r["price"]["gpu_micros_per_s"].values()) or "-"
        price = f"{gpu_price}, {r['price']['cpu_core_micros_per_s']}, {r['price']['memory_gib_micros_per_s']}"
        print(f"{r['provider']:<54} {gpus[:26]:<26} {r['free_cpu_cores']:>4g}/{r['cpu_cores']:<4g} "
              f"{r['free_memory_mib']:>5}/{r['memory_mib']:<6} {price:<26} in {r['expires_at_ms'] / 1000 - now:.0f} s"
              f"{availability_note(r)}")
    return 0


def wanted_image(image: str | None) -> bytes | None:
    """Rule 1: the digest ``--image`` names (None without the flag); SuanliError, one line, when it pins
    nothing."""
    from market.matching import image_digest
    from node.buyrequest import check_image_pin
    from p2p.errors import SuanliError

    if image is None:
        return None
    digest = image_digest(check_image_pin(image))
    if digest is None:
        raise SuanliError(f"--image {image!r}: not a pinned image (sha256:<64 hex> or REGISTRY/REPO@sha256:<64 hex>)",
                          reason="image_tag")
    return digest


def offer_rows(offers: Iterable[Any], image_digest: bytes | None = None) -> list[dict[str, Any]]:
    """The rows ``suanli offers`` prints, one per signed offer, sorted by provider key; only offers that
    hold ``image_digest`` when it is given (Rule 1)."""
    from p2p.identity import peer_id_from_public

    rows = []
    for signed in sorted(offers, key=lambda s: s.record.provider):
        o = signed.record
        if image_digest is not None and image_digest not in o.images:
            continue
        rows.append({
            "provider": peer_id_from_public(o.provider), "offer_id": signed.record_id.hex(), "seq": o.seq,
            "gpus": [g.model for g in o.capacity.gpus], "free_gpus": len(o.free.gpus),
            "gpu_memory_mib": [g.memory_mib for g in o.capacity.gpus],
            "cpu_cores": o.capacity.cpu_millis / 1000, "free_cpu_cores": o.free.cpu_millis / 1000,
            "memory_mib": o.capacity.memory_mib, "free_memory_mib": o.free.memory_mib,
            "price": {"gpu_micros_per_s": dict(o.prices.gpu_micros_per_s),
                      "cpu_core_micros_per_s": o.prices.cpu_core_micros_per_s,
                      "memory_gib_micros_per_s": o.prices.memory_gib_micros_per_s},
            "max_duration_s": o.limits.max_duration_s, "expires_at_ms": o.expires_at_ms, "addrs": list(o.addrs),
            "images": _image_names(o.images), "window_end_ms": o.window_end_ms or None, "notice_ms": o.notice_ms,
            "preemptible": o.preemptible})
    return rows


def _image_names(digests: Sequence[bytes]) -> list[str]:
    return [f"sha256:{d.hex()}" for d in digests]


def availability_note(row: dict[str, Any]) -> str:
    """The table's tail for an offer with a scheduled end or an owner who may take the machine back:
    ", until 22:00, preemptible (30 s notice)" in this machine's local time; "" otherwise."""
    parts = []
    if row["window_end_ms"]:
        parts.append("until " + time.strftime("%H:%M", time.localtime(row["window_end_ms"] / 1000)))
    if row["preemptible"]:
        parts.append(f"preemptible ({row['notice_ms'] / 1000:g} s notice)")
    return "".join(f", {p}" for p in parts)
