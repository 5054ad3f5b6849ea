"""Connections: inbound limits, notifees, dialling, listeners, stale addresses and closing a host
(items 4, 5, 7, 23, 24; issue 13 M1; issue 17 item 8)."""

from __future__ import annotations

import socket as stdlib_socket
from collections import Counter
from typing import Any

import libp2p.transport.tcp.tcp as _tcp_module
import trio
from libp2p.abc import IHost, INetStream, INotifee
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction
from libp2p.transport.tcp.tcp import TCPListener, _multiaddr_from_socket
from multiaddr import Multiaddr

from p2p.limits import InboundGate
from p2p.workarounds._shape import _require_parameters, log
from p2p.workarounds.handlers import _stream_peer

# --- item 4: permanent inbound lockout after 250 connections in a node's lifetime ---------------
# The swarm's inbound limiter has max_connections - min_connections = 250 tokens and a token is only
# released when the swarm stops, so connection 251 onward is refused forever. A huge max_connections
# makes the limiter unreachable. (``gate_inbound`` now ends each connection's handler, and so returns
# its token, when the connection closes; p2p.limits bounds connections per IP and in all.)
# --- item 7: every dial stalls 250 ms (happy-eyeballs delay) unless one connection per peer ------
LIFETIME_INBOUND_CAP = 1_000_000


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(max_connections=LIFETIME_INBOUND_CAP, max_connections_per_peer=1)


# --- issue 13 M1: inbound connections and streams had no working limit --------------------------
# With item 4's limiter made unreachable, and rcmgr's stream limit global (10,000) and not per peer,
# anyone could hold any number of connections and streams: 6 identities x 250 half-sent frames grew
# a provider by 414 MiB. ``gate_inbound`` puts ``p2p.limits.InboundGate`` in front of both: a stream
# is counted from the moment the muxer hands it over (before protocol negotiation) until its handler
# returns, and refused with a reset; a connection is counted from the start of its handshake, and
# refused by closing the socket before any Noise work.
#
# Items 4 and 24 as well: the swarm's handler of an inbound connection waits for the swarm to stop
# (its "intentional barrier"), so one task and its objects (8 KiB measured) outlived every inbound
# connection, and so did a token of the swarm's inbound limiter. The handler is now cancelled when its
# connection is gone: tasks no longer grow with connection churn (tests/p2p/test_limits.py).
#
# Only inbound connections count against the inbound limits: a buyer or agent that dials many
# providers (possibly on one address) must still accept a provider's or a peer's connection.
def gate_inbound(host: IHost, gate: InboundGate) -> None:
    swarm: Any = host.get_network()
    handle_stream = _require_parameters(swarm, "common_stream_handler", ("net_stream",))
    upgrade = _require_parameters(swarm, "upgrade_inbound_raw_conn", ("raw_conn", "maddr"))
    handle_connection = _require_parameters(swarm, "_handle_inbound_connection", ("read_write_closer", "maddr"))
    handshakes: Counter[str] = Counter()
    handlers: dict[int, trio.CancelScope] = {}  # id(the listener's stream) -> its handler's scope
    by_conn: dict[Any, trio.CancelScope] = {}  # muxed connection -> its handler's scope

    async def released_connection(read_write_closer: Any, maddr: Any) -> None:
        with trio.CancelScope() as scope:
            handlers[id(read_write_closer)] = scope
            try:
                await handle_connection(read_write_closer, maddr)
            finally:
                del handlers[id(read_write_closer)]
                for conn in [c for c, s in by_conn.items() if s is scope]:
                    del by_conn[conn]

    class _Release(QuietNotifee):
        async def disconnected(self, network: Any, conn: Any) -> None:
            scope = by_conn.pop(getattr(conn, "muxed_conn", None), None)
            if scope is not None:
                scope.cancel()

    async def gated_stream(stream: INetStream) -> None:
        peer, ip = _stream_peer(stream), _remote_ip(stream.muxed_conn)
        reason = gate.admit_stream(peer, ip)
        if reason is not None:
            log.info("refused a stream from %s at %s: %s", peer, ip, reason)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:  # already broken: nothing to release
                    pass
            return
        try:
            await handle_stream(stream)
        finally:
            gate.release_stream(peer, ip)

    async def gated_upgrade(raw_conn: Any, maddr: Any) -> Any:
        ip = _remote_ip(raw_conn)
        held_by_ip = handshakes[ip]
        held_total = sum(handshakes.values())
        for conns in list(swarm.connections.values()):
            for conn in conns:
                if getattr(conn, "direction", None) == Direction.INBOUND:  # the swarm sets it (add_conn)
                    held_total += 1
                    held_by_ip += _remote_ip(conn.muxed_conn) == ip
        reason = gate.admit_connection(ip, held_by_ip, held_total)
        if reason is not None:
            log.info("refused a connection from %s: %s", ip, reason)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_conn.close()
                except Exception:
                    pass
            raise SwarmException(f"inbound connection refused: {reason}")
        handshakes[ip] += 1
        try:
            muxed = await upgrade(raw_conn, maddr)
        finally:
            handshakes[ip] -= 1
            if handshakes[ip] <= 0:
                del handshakes[ip]
        scope = handlers.get(id(getattr(raw_conn, "stream", None)))
        if scope is not None:
            by_conn[muxed] = scope
            if getattr(muxed, "is_closed", False):  # gone already: no disconnect will come
                scope.cancel()
        return muxed

    swarm.common_stream_handler = gated_stream
    swarm.upgrade_inbound_raw_conn = gated_upgrade
    swarm._handle_inbound_connection = released_connection
    swarm.register_notifee(_Release())


class QuietNotifee(INotifee):
    """A notifee that ignores every event; subclasses override the ones they need."""

    async def connected(self, network: Any, conn: Any) -> None:
        return None

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


def _remote_ip(conn: Any) -> str:
    try:
        address = conn.get_remote_address()
    except Exception:
        address = None
    return str(address[0]) if address else "?"

# --- found here: the swarm's auto-connector dials every peer it has heard of, towards 200 connections --
# py-libp2p's AutoConnector aims at the midpoint of its watermarks (100 and 300) and, while a node has
# fewer than ``min_connections`` (50: every Suanli node), re-dials peers from the peerstore every 10 s
# and after every disconnect: departed buyers, providers a lookup named, peers that are stopping. An
# operator's daemon would hold up to 200 connections it has no use for, and each failed dial logs an
# ERROR. Suanli connects on purpose: joining and re-joining the bootstrap peers, DHT lookups and
# routing-table refreshes, negotiations and jobs. So the auto-connector never dials; the pruner, which
# trims above the high watermark, is untouched.
async def _no_auto_dial() -> None:
    return None


def no_auto_dial(host: IHost) -> None:
    host.get_network().auto_connector.maybe_connect = _no_auto_dial  # type: ignore[attr-defined]


# --- found here: the swarm retries every failed dial three times, 0.7 s in all -----------------------
# Swarm._dial_with_retry tries an address again after 0.1, 0.2 and 0.4 s, whatever the failure
# (a refused connection included). A DHT lookup names departed peers (client-mode buyers stay in
# servers' routing tables, item 15), so a standalone ``suanli run`` spent 0.7 s on each one before its
# offer collection could end: offers found 0.2 s after joining when no departed peer was named, 0.9 to
# 1.5 s when one was (measured with bench/e2e.py's network). Every caller that dials already retries
# where a retry helps: joining (``connect_attempts``, jittered back-off), negotiation (the next
# candidate), lookups (the other peers), offer collection (the agent's next refresh). So the swarm
# dials each address once (``new_host`` takes no retry config: it is set on the swarm it built).
def dial_once(host: IHost) -> None:
    host.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]

# --- found here: a TCP listener half-way through closing makes host.get_addrs() raise ---------------
# TCPListener.close() closes its sockets, and forgets them only after an await. A task that asks for the
# host's addresses in between gets OSError EBADF: libp2p's identify handler does exactly that (it waits
# for ``host.get_addrs()`` to be non-empty), so an identify request answered during shutdown raised out
# of the handler and out of the host instead of the host stopping cleanly (seen with 21 hosts stopping
# at once in one process). A closed socket has no address: ``get_addrs`` skips it.
def _open_listener_addrs(self: TCPListener) -> tuple[Multiaddr, ...]:
    return tuple(_multiaddr_from_socket(listener.socket) for listener in self.listeners
                 if listener.socket.fileno() != -1)


def skip_closed_listeners() -> None:
    TCPListener.get_addrs = _open_listener_addrs  # type: ignore[method-assign]

# --- found here (issue 17 item 8): listeners share their port with any other process --------------
# py-libp2p sets SO_REUSEPORT (and SO_REUSEADDR) on every TCP listen socket and on hole-punch dial
# sockets (``_set_reuse_flags``, for DCUtR's simultaneous open from the listen port). On Linux a second
# process that also sets SO_REUSEPORT (a second py-libp2p node, any program) could then bind the same
# port, and the kernel split incoming connections between the two: seen with two ``suanli bootstrap
# --listen /ip4/127.0.0.1/tcp/P``, both "listening". Suanli does no hole punching: SO_REUSEADDR alone
# (a restart may still bind a port with connections in TIME_WAIT), so the second bind fails with
# EADDRINUSE and p2p.listen says so.
def _reuse_address_only(sock: Any) -> None:
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    except OSError:
        pass


def own_listen_ports() -> None:
    if _tcp_module._set_reuse_flags is not _reuse_address_only:
        _require_parameters(_tcp_module, "_set_reuse_flags", ("sock",))
        _tcp_module._set_reuse_flags = _reuse_address_only


# --- item 23: reconnecting to a restarted peer (same id, new port) fails --------------------------
# connect() dials the peerstore's addresses (the dead one first, one per transport), then a 60 s
# negative cache refuses further attempts.
def forget_peer_addrs(host: IHost, peer_id: ID) -> None:
    """Drop stale addresses and the negative-cache entry of ``peer_id`` before dialing it afresh."""
    if peer_id in host.get_network().connections:
        return  # connected: the addresses in use are good
    try:
        host.get_peerstore().clear_addrs(peer_id)
    except Exception:  # unknown peer: nothing to clear
        pass
    host.get_network().unblock_peer(peer_id)

# --- item 5: leaving host.run() closes nothing (port still accepts, peers keep the connection) ---
async def close_host(host: IHost, timeout_s: float = 5.0) -> None:
    """Close listeners and connections; must be awaited inside ``host.run()``."""
    with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
        # Found here: Swarm.close() closes connections one after another, and each close sleeps
        # 0.2 s (SwarmConn.close and Yamux.close each `await trio.sleep(0.1)`), so a bootstrap with
        # 100 peers took 20 s to stop. Close them side by side first; host.close() then finds none.
        network = host.get_network()
        async with trio.open_nursery() as nursery:
            for conns in list(network.connections.values()):
                for conn in list(conns):
                    nursery.start_soon(_close_quietly, conn)
        await host.close()


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception as exc:  # a broken connection is closed enough
        log.debug("closing %r: %r", conn, exc)
