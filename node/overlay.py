"""How the node uses the overlay (p2p): what a provider announces and how a buyer finds offers.

Provider: the offers topic (validated like every node), ``/suanli/offer/1.0.0`` answering with the
current signed offer, gossip on every new offer (on change and before expiry only), and DHT provider
records under its capability keys ("any", "gpu/any", "gpu/<model>"), re-announced periodically.
Buyer: gossip heard while it waits, plus a direct query to every provider the DHT names for the
capability the job needs (p2p.offer_query.collect_offers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from market.matching import JobRequest
from p2p import dht
from p2p.envelope import Signed
from p2p.gossip import OFFERS_TOPIC, OfferLedger, offer_feed, offer_topics, publish_offer
from p2p.host import Node
from p2p.market_records import Offer
from p2p.offer_query import OFFER_PROTOCOL, collect_offers, offer_handler


def capabilities_of(offer: Offer) -> list[str]:
    return dht.capability_names([g.model for g in offer.capacity.gpus])


@dataclass
class ProviderOverlay:
    ledger: OfferLedger[Offer] = field(default_factory=lambda: OfferLedger(Offer))
    current: Callable[[], Signed[Offer] | None] = lambda: None

    @property
    def handlers(self) -> dict[str, Any]:
        return {OFFER_PROTOCOL: offer_handler(lambda: self.current())}

    @property
    def topics(self) -> dict[str, Any]:
        return offer_topics(self.ledger)

    async def announce(self, node: Node, signed: Signed[Offer]) -> None:
        await wait_for_offer_mesh(node)
        await publish_offer(node, signed)

    def attach(self, runtime: Any) -> None:
        self.current = lambda: runtime.offer

    async def serve(self, runtime: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = runtime.node

        def names() -> list[str]:
            return capabilities_of(runtime.offer.record) if runtime.offer else [dht.ANY_COMPUTE]

        async def drain() -> None:  # the subscription queue is bounded: keep it empty (workarounds)
            async for _ in offer_feed(node, self.ledger):
                pass

        async with trio.open_nursery() as nursery:  # open_host already keeps the routing table filled
            await nursery.start(dht.serve_provider_records, node, names)
            nursery.start_soon(drain)
            task_status.started()


MESH_WAIT_S = 3.0
MESH_POLL_S = 0.05


async def wait_for_offer_mesh(node: Node, *, timeout_s: float = MESH_WAIT_S) -> None:
    """Wait, within ``timeout_s``, until the offers topic has a mesh peer, if any connected peer takes the
    topic (issue 17 item 3). A provider that has just joined publishes its first offer into a mesh its
    first GossipSub heartbeat has not yet built: nobody receives it until a later heartbeat's gossip, so a
    buyer agent kept the offer of the provider's previous run (its old port) a second or two longer."""
    for _ in range(int(timeout_s / MESH_POLL_S)):
        if node.router.mesh.get(OFFERS_TOPIC) or not node.pubsub.peer_topics.get(OFFERS_TOPIC):
            return
        await trio.sleep(MESH_POLL_S)


def provider_overlay() -> ProviderOverlay:
    return ProviderOverlay()


def capability_for(request: JobRequest) -> str:
    r = request.resources
    if r.gpus and r.gpu_model:
        return dht.capability_names([r.gpu_model])[-1]
    if r.gpus:
        return dht.ANY_GPU
    return dht.ANY_COMPUTE


@dataclass
class BuyerOverlay:
    ledger: OfferLedger[Offer] = field(default_factory=lambda: OfferLedger(Offer))

    @property
    def topics(self) -> dict[str, Any]:
        return offer_topics(self.ledger)

    async def discover(self, node: Node, request: JobRequest, wait_s: float) -> list[Signed[Offer]]:
        return await collect_offers(node, self.ledger, capability=capability_for(request), wait_s=wait_s)
