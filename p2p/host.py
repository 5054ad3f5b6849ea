"""``open_host``: one py-libp2p host per node, built the only way Suanli builds one.

TCP, Noise only, Yamux only, the node's own Ed25519 key (the libp2p peer id is the key's peer id),
Kademlia and GossipSub started, and every workaround of ``p2p.workarounds`` applied.

Rule 1 (order, docs/LIBP2P.md items 3 and 31, issue 7): Pubsub, GossipSub and the DHT are started and every
stream handler, topic validator and subscription is registered before the host dials anyone;
handlers therefore come in through ``HostConfig``, not afterwards.
Rule 2 (item 5): leaving ``open_host`` closes listeners and connections, stops every service and
thread it started, and leaves no trio task behind.
Rule 3: every handler runs inside ``safe_stream_handler`` and every validator inside
``safe_validator``: a peer can end a stream, never the node.
Rule 4 (issue 13 M1): inbound connections and streams pass ``p2p.limits.InboundGate`` (per peer, per
IP address and in all, ``HostConfig.limits``), and Yamux never buffers past a stream's window.
Rule 5 (issue 17 item 3): a peer that restarts on a new port is dialled at its new addresses: fresh
addresses (from its offer or a DHT record) replace the old ones, which py-libp2p would otherwise keep
first and dial alone (one TCP address per peer), and lift the 60 s negative cache.
Rule 6 (issue 17 item 8): a node listens where it was told, alone, or does not start: listen addresses
are checked and trial-bound first (p2p.listen), no listener shares its port (SO_REUSEPORT off,
p2p.workarounds), and a listener py-libp2p failed to open stops the node with one line, never a node
that is ready with no address.
Rule 7 (issue 17 item 11): an address that answers as another peer than its ``/p2p/`` part names is
``WrongPeerError`` at once (it is not retried: the same peer would answer), and a node that joins
nobody because of it says so instead of "no bootstrap peer answered" after every back-off.
Rule 8 (issue 15, p2p.relay): a node learns its reachability (p2p.reach); while it is not public and
``relays`` is set it keeps circuit relay reservations and advertises their ``/p2p-circuit`` addresses;
a peer whose addresses include circuits is dialled directly first, then through a relay.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream, ISubscriptionAPI
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import Direction
from libp2p.tools.anyio_service import background_trio_service

from p2p import dht as dht_ops
from p2p import relay as relaying
from p2p import relay_dial, workarounds
from p2p.addrs import WrongPeerError, advertised_addrs, answered_as, parse_multiaddr
from p2p.errors import LocalProtocolError, PeerUnreachableError
from p2p.errors import leaves as errors_leaves
from p2p.identity import NodeKey
from p2p.limits import InboundGate, InboundLimits
from p2p.listen import check_listening, parse_listen_addrs, try_bind
from p2p.relay_limits import RelayLimits, RelayPolicy

log = logging.getLogger("suanli.p2p.host")

StreamHandler = Callable[[INetStream], Awaitable[None]]
TopicValidator = Callable[[ID, Any], bool]
DhtMode = Literal["server", "client"]

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/0",)


@dataclass(frozen=True)
class HostConfig:
    """What a node's host needs; everything that must exist before the first dial is in here."""

    key: NodeKey
    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    dht_mode: DhtMode = "server"
    # protocol id -> handler; each is wrapped in safe_stream_handler.
    handlers: Mapping[str, StreamHandler] = field(default_factory=dict)
    # topic -> sync validator (or None); each topic is subscribed and validated before dialing.
    topics: Mapping[str, TopicValidator | None] = field(default_factory=dict)
    # bootstrap: attempts per address, first back-off, back-off cap, and one dial's budget.
    connect_attempts: int = 6
    connect_backoff_s: float = 0.25
    connect_backoff_max_s: float = 8.0
    dial_timeout_s: float = 10.0
    # Raise PeerUnreachableError when bootstrap addresses are given and none answers.
    require_bootstrap: bool = True
    # While running, re-dial bootstrap peers every this many seconds if no peer is connected.
    rejoin_interval_s: float = 30.0
    # Addresses to advertise instead of the listen addresses (a public IP or port behind NAT).
    announce: tuple[str, ...] = ()
    # Look ourselves up in the DHT right after joining, then every this many seconds (p2p.dht Rule 3).
    routing_refresh_s: float = 120.0
    gossip_heartbeat_s: int = 1
    # Rule 4: what strangers may hold at once (p2p.limits).
    limits: InboundLimits = field(default_factory=InboundLimits)
    # Rule 8 (issue 15): serve circuit relay v2 HOP with these limits (a bootstrap host); and, while
    # not public, keep reservations on ``relay_want`` of ``relays`` (None: never; (): the bootstrap hosts).
    relay_hop: RelayLimits | None = None
    relays: tuple[str, ...] | None = None
    relay_want: int = 2
    reachability: Literal["auto", "public", "private"] = "auto"  # "auto": p2p.reach decides


def key_pair_of(key: NodeKey) -> Any:
    """The libp2p KeyPair of a NodeKey (the seed is the Ed25519 private key)."""
    key_pair = create_new_key_pair(key.seed)
    if key_pair.public_key.to_bytes() != key.public:
        raise LocalProtocolError("libp2p derived another public key from this seed", peer=key.peer_id)
    return key_pair


class ConnectionCounter(workarounds.QuietNotifee):
    """Connections accepted and made over the node's life (the bootstrap reports these)."""

    def __init__(self) -> None:
        self.inbound = 0
        self.outbound = 0

    async def connected(self, network: Any, conn: Any) -> None:
        if getattr(conn, "direction", None) == Direction.INBOUND:
            self.inbound += 1
        else:
            self.outbound += 1


class Node:
    """A running host and its services; made only by ``open_host``."""

    def __init__(self, config: HostConfig, host: IHost, pubsub: Pubsub, router: GossipSub, dht: KadDHT,
                 subscriptions: dict[str, ISubscriptionAPI], gate: InboundGate) -> None:
        self.config = config
        self.key = config.key
        self.peer_id: str = config.key.peer_id
        self.host = host
        self.pubsub = pubsub
        self.router = router
        self.dht = dht
        self.subscriptions = subscriptions
        self.connections = ConnectionCounter()
        host.get_network().register_notifee(self.connections)
        self.gate = gate
        self.wrong_peers: list[WrongPeerError] = []  # Rule 7: bootstrap addresses that answered as another peer
        self.relay = relaying.RelayClient(
            self.peer_id, relaying.relay_candidates(config.relays or (), config.bootstrap), want=config.relay_want)
        self.hop = RelayPolicy(config.relay_hop) if config.relay_hop is not None else None
        self.reachability = "unknown"

    def addrs(self) -> list[str]:
        """Full multiaddrs, ``/ip4/…/tcp/…/p2p/…``."""
        return [str(a) for a in self.host.get_addrs()]

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self.host.get_connected_peers()]

    async def connect(self, addr: str | multiaddr.Multiaddr) -> str:
        """Connect to one peer by its full multiaddr; returns its peer id. One attempt, no retry."""
        maddr = addr if isinstance(addr, multiaddr.Multiaddr) else parse_multiaddr(
            addr, what="peer address", need_peer=True)
        info = info_from_p2p_addr(maddr)
        return await self.connect_info(info)

    async def connect_info(self, info: PeerInfo) -> str:
        pid = info.peer_id.to_base58()
        if info.peer_id == self.host.get_id():
            raise LocalProtocolError("refusing to dial ourselves", peer=pid)
        workarounds.forget_peer_addrs(self.host, info.peer_id)  # item 23
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await self.host.connect(info)
        except trio.TooSlowError as exc:
            raise PeerUnreachableError(f"dialing {pid} timed out", peer=pid,
                                       addr=[str(a) for a in info.addrs]) from exc
        except (BaseLibp2pError, OSError) as exc:
            actual = answered_as(exc)
            if actual is not None:
                raise WrongPeerError(f"{' '.join(str(a) for a in info.addrs)} answered as peer {actual}, not {pid}",
                                     peer=pid, actual=actual, addr=[str(a) for a in info.addrs]) from exc
            raise PeerUnreachableError(f"cannot connect to {pid}: {exc}", peer=pid,
                                       addr=[str(a) for a in info.addrs]) from exc
        return pid

    async def open_stream(self, peer_id: str, protocol: str, addrs: Sequence[str] = ()) -> INetStream:
        """A new stream to a peer, dialing it if needed: at ``addrs`` (e.g. an offer's), else at the
        addresses the peerstore holds, else at those a DHT lookup finds."""
        try:
            pid = ID.from_base58(peer_id)
        except Exception as exc:
            raise LocalProtocolError(f"not a peer id: {peer_id!r}", peer=peer_id) from exc
        try:
            if pid not in self.host.get_network().connections:
                circuits = [a for a in (addrs or relay_dial.known_addrs(self, pid)) if relaying.is_circuit(a)]
                if circuits:  # Rule 8: a direct address first, briefly; then through each relay in turn
                    direct = [a for a in (addrs or relay_dial.known_addrs(self, pid)) if not relaying.is_circuit(a)]
                    await relay_dial.connect_some_way(self, pid, direct, circuits)
                else:
                    await self._learn_addrs(pid, addrs)
            return await self.host.new_stream(pid, [TProtocol(protocol)])
        except (BaseLibp2pError, OSError) as exc:
            raise PeerUnreachableError(f"cannot open {protocol} to {peer_id}: {exc}", peer=peer_id,
                                       protocol=protocol) from exc

    def replace_addrs(self, pid: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        """Rule 5: ``addrs`` (an offer's, a fresh DHT record's) replace what the peerstore holds for an
        unconnected peer, and lift its negative-cache entry (item 23); a connected peer is left as is."""
        if pid in self.host.get_network().connections:
            return
        workarounds.forget_peer_addrs(self.host, pid)
        self.host.get_peerstore().add_addrs(pid, list(addrs), 600)

    async def _learn_addrs(self, pid: ID, addrs: Sequence[str]) -> None:
        store = self.host.get_peerstore()
        parsed = []
        for text in addrs:
            try:
                maddr = multiaddr.Multiaddr(text)
                parsed.append(maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{pid.to_base58()}"))
                              if "/p2p/" in text else maddr)
            except Exception:  # an unusable advertised address is skipped, not fatal
                continue
        if parsed:
            self.replace_addrs(pid, parsed)
            return
        try:
            known = store.addrs(pid)
        except Exception:
            known = []
        if not known:
            info = await self.dht.find_peer(pid)
            if info is not None and info.addrs:
                store.add_addrs(pid, info.addrs, 600)

    async def join(self, addrs: tuple[str, ...]) -> list[str]:
        """Connect to each address with retry and exponential back-off; returns who answered."""
        infos = [info_from_p2p_addr(parse_multiaddr(a, what="bootstrap address", need_peer=True))
                 for a in addrs]
        joined: list[str] = []
        self.wrong_peers = []  # this round's

        async def one(info: PeerInfo) -> None:
            delay = self.config.connect_backoff_s
            for attempt in range(1, self.config.connect_attempts + 1):
                try:
                    joined.append(await self.connect_info(info))
                    return
                except WrongPeerError as exc:  # Rule 7: another try would meet the same peer
                    log.info("bootstrap %s", exc)
                    self.wrong_peers.append(exc)
                    return
                except PeerUnreachableError as exc:
                    log.info("bootstrap %s attempt %d/%d failed: %s", info.peer_id, attempt,
                             self.config.connect_attempts, exc)
                if attempt < self.config.connect_attempts:
                    await trio.sleep(delay * (0.75 + random.random() / 2))
                    delay = min(delay * 2, self.config.connect_backoff_max_s)

        async with trio.open_nursery() as nursery:
            for info in infos:
                if info.peer_id != self.host.get_id():
                    nursery.start_soon(one, info)
        for pid in joined:
            try:  # the peers we bootstrap from are DHT servers by definition
                await self.dht.add_peer(ID.from_base58(pid), skip_server_mode_check=True)
            except Exception as exc:
                log.info("could not add %s to the routing table: %r", pid, exc)
        return joined

    async def _rejoin_loop(self) -> None:
        # Bounded per round by join(); runs until open_host's nursery is cancelled.
        while True:
            await trio.sleep(self.config.rejoin_interval_s)
            if self.config.bootstrap and not self.host.get_connected_peers():
                log.warning("no peer connected; re-dialing bootstrap peers")
                try:
                    await self.join(self.config.bootstrap)
                except Exception as exc:  # a background loop of open_host must never end the node
                    log.warning("re-joining failed: %r", exc)


@asynccontextmanager
async def open_host(config: HostConfig) -> AsyncIterator[Node]:
    """Build, start and join; on exit close everything (Rules 1-3).

    An exception from the body or from joining comes out as itself, not wrapped in the exception
    groups of the dozen nurseries inside py-libp2p (a group is kept when there are several).
    """
    try:
        async with _open_host(config) as node:
            yield node
    except BaseExceptionGroup as group:
        leaves = errors_leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise


@asynccontextmanager
async def _open_host(config: HostConfig) -> AsyncIterator[Node]:
    workarounds.quiet_libp2p_logging()
    workarounds.skip_closed_listeners()
    workarounds.own_listen_ports()  # Rule 6
    for checked in parse_listen_addrs(config.listen):  # Rule 6: one line, before anything starts
        try_bind(checked)
    listen = [parse_multiaddr(a, what="listen address", need_peer=False) for a in config.listen]
    for a in config.bootstrap:
        parse_multiaddr(a, what="bootstrap address", need_peer=True)
    announce = [parse_multiaddr(a, what="announce address", need_peer=False) for a in config.announce]
    key_pair = key_pair_of(config.key)
    host = new_host(
        key_pair=key_pair,
        sec_opt=workarounds.noise_only(key_pair),
        muxer_opt=workarounds.yamux_only(),
        listen_addrs=listen,
        connection_config=workarounds.connection_config(),
        **({"announce_addrs": announce} if announce else {"addrs_factory": advertised_addrs}),
    )
    workarounds.dial_once(host)
    workarounds.enforce_yamux_window()  # Rule 4
    workarounds.limit_identify_messages()  # Rule 4
    gate = InboundGate(config.limits)
    workarounds.gate_inbound(host, gate)  # Rule 4, before the host listens
    workarounds.no_auto_dial(host)
    if host.get_id().to_base58() != config.key.peer_id:
        raise LocalProtocolError("libp2p peer id differs from the key's peer id", expected=config.key.peer_id,
                                 actual=host.get_id().to_base58())
    pubsub, router = workarounds.new_pubsub(host, heartbeat_interval_s=config.gossip_heartbeat_s)
    mode = DHTMode.SERVER if config.dht_mode == "server" else DHTMode.CLIENT
    dht = KadDHT(host, mode)
    try:
        async with host.run(listen_addrs=listen):
            try:
                check_listening(host.get_network().listeners, config.listen)  # type: ignore[attr-defined]  # Rule 6
                async with background_trio_service(pubsub), background_trio_service(router):
                    await pubsub.wait_until_ready()
                    async with background_trio_service(dht):
                        node = await _register(config, host, pubsub, router, dht, gate)
                        log.info("node %s listening on %s", node.peer_id, " ".join(node.addrs()))
                        async with trio.open_nursery() as nursery:
                            if config.bootstrap:
                                joined = await node.join(config.bootstrap)
                                if not joined and config.require_bootstrap and node.wrong_peers:  # Rule 7
                                    wrong = node.wrong_peers[0]
                                    raise WrongPeerError(f"bootstrap {wrong}: correct the peer id after /p2p/ (a "
                                                         "bootstrap prints its full address when it starts)",
                                                         **wrong.fields)
                                for wrong in node.wrong_peers:
                                    log.warning("bootstrap %s: correct the peer id after /p2p/", wrong)
                                if not joined and config.require_bootstrap:
                                    raise PeerUnreachableError(
                                        "no bootstrap peer answered: " + ", ".join(config.bootstrap),
                                        addr=list(config.bootstrap), attempts=config.connect_attempts)
                                log.info("joined via %s", ", ".join(joined) or "nobody (will retry)")
                            nursery.start_soon(node._rejoin_loop)
                            nursery.start_soon(relaying.serve_reachability, node)
                            nursery.start_soon(partial(dht_ops.serve_routing_refresh, node,
                                                       interval_s=config.routing_refresh_s))
                            try:
                                yield node
                            finally:
                                nursery.cancel_scope.cancel()
                                # Close connections while the services still run: a stream that
                                # reaches a stopped Pubsub raises inside the swarm (cf. item 3).
                                await workarounds.close_host(host)
            finally:
                await workarounds.close_host(host)  # item 5: inside run(); idempotent
    finally:
        workarounds.stop_pubsub_threads(pubsub)  # item 26


async def _register(config: HostConfig, host: IHost, pubsub: Pubsub, router: GossipSub, dht: KadDHT,
                    gate: InboundGate) -> Node:
    if dht.mode == DHTMode.SERVER:
        workarounds.silence_add_provider_echo(host, dht)  # issue 7
        workarounds.widen_kad_inbound_limit(dht)  # item 18
    for protocol in pubsub.protocols:  # item 1 holds for py-libp2p's own handlers too
        safe = workarounds.safe_stream_handler(pubsub.stream_handler, str(protocol))
        host.set_stream_handler(protocol, safe)
    handlers = dict(config.handlers)
    node_box: list[Node] = []
    handlers.update(relaying.relay_handlers(host, config, lambda: node_box[0]))  # Rule 8
    for proto_id, handler in handlers.items():
        host.set_stream_handler(TProtocol(proto_id), workarounds.safe_stream_handler(handler, proto_id))
    subscriptions: dict[str, ISubscriptionAPI] = {}
    for topic, validator in config.topics.items():
        if validator is not None:
            pubsub.set_topic_validator(topic, workarounds.safe_validator(validator, topic),
                                       is_async_validator=False)
        subscriptions[topic] = await pubsub.subscribe(topic)
    node = Node(config, host, pubsub, router, dht, subscriptions, gate)
    node_box.append(node)
    relaying.advertise_circuits(host, node.relay)
    return node
