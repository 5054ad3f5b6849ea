"""The bootstrap node: a fixed identity at a fixed address that helps peers find each other.

It is a Kademlia server (every joining node's first routing-table entry), a GossipSub peer that
validates and relays offers (so offers propagate through it), and nothing else: it holds no offers of
its own and answers no Suanli protocol.

Rule 1: the bootstrap validates offers exactly as every other node does (``p2p.gossip``), with the
offer record class handed in by the caller (``bootstrap`` depends on ``p2p`` only, never ``market``).
Rule 2: it must keep accepting connections for its whole life (docs/LIBP2P.md item 4, handled by
``p2p.workarounds.connection_config``); ``status`` reports how many it has accepted.
Rule 3: ``run_bootstrap`` runs until cancelled; the caller owns signals (SIGINT/SIGTERM cancel it) and
leaving it closes everything (``open_host`` Rule 2).
Rule 4 (issue 15): it is also a circuit relay v2 HOP for private nodes unless ``relay`` is None, with
the limits of ``p2p.relay_limits.RelayLimits`` checked before py-libp2p sees a request (``p2p.relay``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from p2p import dht
from p2p.gossip import OfferLedger, offer_feed, offer_topics, wall_ms
from p2p.host import HostConfig, Node, open_host
from p2p.identity import NodeKey
from p2p.limits import BOOTSTRAP_LIMITS
from p2p.records import Record
from p2p.relay_limits import RelayLimits

log = logging.getLogger("suanli.bootstrap")

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)
DEFAULT_RELAY = RelayLimits()


@dataclass
class Bootstrap:
    """What ``run_bootstrap`` hands its caller once it listens."""

    node: Node
    ledger: OfferLedger[Any]

    def status(self) -> dict[str, Any]:
        """One JSON-able status line: who, where, peers, offers held, connections over its life, relay use."""
        hop = self.node.hop
        return {
            "peer_id": self.node.peer_id,
            "addrs": self.node.addrs(),
            "connected_peers": len(self.node.connected_peers()),
            "routing_table": dht.routing_table_size(self.node),
            "offers": len(self.ledger.current(wall_ms())),
            "inbound_total": self.node.connections.inbound,
            "outbound_total": self.node.connections.outbound,
            "relay": hop.status(time.monotonic()) if hop is not None else None,
        }


async def run_bootstrap(key: NodeKey, listen: Sequence[str] = DEFAULT_LISTEN, *,
                        offer_cls: type[Record], bootstrap: Sequence[str] = (),
                        relay: RelayLimits | None = DEFAULT_RELAY,
                        task_status: trio.TaskStatus[Bootstrap] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a bootstrap node until cancelled; ``task_status.started(Bootstrap)`` once it listens.

    ``bootstrap`` lists other bootstrap nodes to join (optional: the first one starts alone); ``relay``
    the relay's limits (None: no relay).
    """
    ledger: OfferLedger[Any] = OfferLedger(offer_cls)
    config = HostConfig(key=key, listen=tuple(listen), bootstrap=tuple(bootstrap), dht_mode="server",
                        topics=offer_topics(ledger), require_bootstrap=False, limits=BOOTSTRAP_LIMITS,
                        relay_hop=relay)
    async with open_host(config) as node:
        log.info("bootstrap %s ready: %s", node.peer_id, " ".join(node.addrs()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_relay_only, node, ledger)
            task_status.started(Bootstrap(node, ledger))
            await trio.sleep_forever()


async def _relay_only(node: Node, ledger: OfferLedger[Any]) -> None:
    # GossipSub forwards what the validator accepts; this drains the local delivery queue (item 11).
    async for signed in offer_feed(node, ledger):
        log.debug("relayed offer seq %d", signed.record.seq)  # type: ignore[attr-defined]
