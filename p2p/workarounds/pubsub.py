"""GossipSub and Pubsub defaults (items 8, 9, 11, 14, 26 and the validation cache)."""

from __future__ import annotations

import hashlib
from typing import Any

import libp2p.pubsub.pubsub as _pubsub_module
from libp2p.abc import IHost
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub

from p2p.workarounds.kad import LIBP2P_MESSAGE_BYTES

# --- GossipSub defaults: items 8, 9, 11, 14, 26 and the validation cache -----------------------
# item 8: spam protection silently drops a publisher's messages beyond 10 msg/s, own publishes too.
# item 9: "adaptive gossip" turns a 1 s heartbeat into 30 s on a healthy idle network.
# item 11: a subscription queue of 32 messages; a busy consumer silently loses the rest.
SUBSCRIPTION_CHANNEL_SIZE = 1024


def offer_message_id(msg: Any) -> bytes:
    """item 14: the default id is from+seqno, so a republished identical payload is a new message."""
    return hashlib.sha256(msg.data).digest()


class _NoValidationCache:
    """Found here (beyond docs/LIBP2P.md's list): Pubsub caches each validator verdict by message id
    for 300 s, ahead of the validator. With content ids (item 14) anyone who republishes a provider's
    signed offer under their own peer id gets it cached as invalid (signer != publisher), and the
    provider's own copy is then refused from the cache: an offer can be censored by its bytes alone.
    A valid verdict is likewise replayed after its offer expired. Validators here are cheap: no cache."""

    def get(self, msg_id: bytes) -> None:
        return None

    def put(self, msg_id: bytes, result: Any) -> None:
        return None

    def clear_expired(self) -> None:
        return None


def new_pubsub(host: IHost, *, heartbeat_interval_s: int = 1) -> tuple[Pubsub, GossipSub]:
    """A GossipSub router and Pubsub with the defaults above fixed; not started yet."""
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
        _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, SUBSCRIPTION_CHANNEL_SIZE)
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        # D=4 (3..8) rather than go's 6: each duplicate delivery costs ~30 ms of CPU here (item 10);
        # bench/overlay.py at N=50 on 2 cores: p95 propagation 1.8 s.
        degree=4, degree_low=3, degree_high=8,
        heartbeat_initial_delay=0.5,
        heartbeat_interval=heartbeat_interval_s,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=offer_message_id,
                    max_inbound_rpc_size=LIBP2P_MESSAGE_BYTES)  # issue 13 M1
    pubsub.validation_cache = _NoValidationCache()  # type: ignore[assignment]
    return pubsub, router


# --- item 26: every Pubsub starts a LastSeenCache sweeper thread that outlives shutdown ----------
def stop_pubsub_threads(pubsub: Pubsub) -> None:
    pubsub.seen_messages.stop()
