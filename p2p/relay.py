"""Circuit relay v2 (libp2p/specs relay/circuit-v2.md) as Suanli uses it, on py-libp2p 0.8.1.

- **HOP** (a bootstrap host): ``hop_handler`` reads each request itself, asks
  ``p2p.relay_limits.RelayPolicy`` with the connection's authenticated peer and IP address, and only
  then hands it to py-libp2p's handler (docs/LIBP2P.md item 33: that handler takes a reservation's
  peer id from the request and has only global limits).
- **STOP** (every node that keeps reservations): ``stop_handler`` accepts a relayed connection only
  from a relay it holds a reservation on, then lets py-libp2p upgrade it (Noise, Yamux).
- **Reservations** (a private node): ``RelayClient.serve`` keeps one on each of ``want`` relays,
  renews each at half its lifetime, drops one whose relay went away and reserves on the next
  candidate; its ``/p2p-circuit`` addresses are advertised with the node's own (``advertise_circuits``).
- **Dialling** through a relay and the upgrade to direct: ``p2p.relay_dial``.

Rule 1: one HOP request per stream (the spec's flow; py-libp2p's loop over several is not used).
Rule 2: every wait has a bound (``HOP_TIMEOUT_S``); a relay that does not answer is a failed try.
Rule 3 (item 32): reservations are made by hand; py-libp2p's ``RelayDiscovery(auto_reserve=True)``
made none, and its client sends the ``peer`` field that item 33 is about.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
from libp2p.relay.circuit_v2.resources import RelayLimits as LibRelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from p2p.errors import PeerUnreachableError
from p2p.relay_limits import RelayLimits, RelayPolicy

log = logging.getLogger("suanli.p2p.relay")

HOP = str(PROTOCOL_ID)
STOP = str(STOP_PROTOCOL_ID)
HOP_TIMEOUT_S = 10.0
CIRCUIT = "/p2p-circuit"


def is_circuit(addr: str) -> bool:
    return CIRCUIT + "/" in addr or addr.endswith(CIRCUIT)


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """``<relay address>/p2p/<relay>/p2p-circuit/p2p/<peer>``: where a peer is reachable through a relay."""
    return f"{relay_addr}{CIRCUIT}/p2p/{peer_id}"


def _lib_limits(limits: RelayLimits) -> LibRelayLimits:
    # py-libp2p counts circuits per destination reservation (max_circuit_conns) and enforces duration
    # and bytes in its relay loop; our policy has already applied the stricter per-peer/IP counts.
    return LibRelayLimits(duration=limits.circuit_duration_s, data=limits.circuit_bytes,
                          max_circuit_conns=limits.circuits_per_peer, max_reservations=limits.reservations,
                          reservation_ttl=limits.reservation_ttl_s)


def stream_ip(stream: Any) -> str:
    """The IP address a stream's connection comes from ("?" when the transport does not say)."""
    conn = getattr(stream, "muxed_conn", None)
    for holder in (conn, getattr(conn, "secured_conn", None)):
        try:
            address = holder.get_remote_address()  # type: ignore[union-attr]
        except Exception:
            continue
        if address:
            return str(address[0])
    return "?"


def is_relayed(stream: Any) -> bool:
    conn = getattr(stream, "muxed_conn", None)
    try:
        addrs = conn.get_transport_addresses() or []  # type: ignore[union-attr]
    except Exception:
        return False
    return any(CIRCUIT in str(a) for a in addrs)


async def _status(stream: INetStream, code: StatusCode) -> None:
    with trio.move_on_after(HOP_TIMEOUT_S):
        await write_delimited_msg(stream, HopMessage(type=HopMessage.STATUS, status=to_proto_status(code)))
    await stream.close()


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(HOP_TIMEOUT_S):
        try:
            await stream.reset()
        except Exception:  # already gone
            pass


def end_circuits_with_a_reset(library: CircuitV2Protocol) -> None:
    """Found here (bench/nat.py): a circuit outlived its source by up to the duration limit (600 s).

    py-libp2p's relay copies each direction in ``_relay_data`` and, when one ends, "closes" the streams it
    finds in ``_active_relays`` under the *peer id*: the entry of another circuit of the same peer (the
    latest), and only half-closed. The other direction of the circuit that ended kept reading, and its
    slot stayed taken: a private node was refused (RESOURCE_LIMIT_EXCEEDED) once 4 buyers had come and
    gone. Here the first direction to end cancels the other (a read on a stream reset locally is not
    woken: measured) and resets its own circuit's two streams; py-libp2p's cleanup by peer id is made a
    no-op (it could only hit a live circuit).
    """
    relay_data = library._relay_data
    directions: dict[frozenset[int], list[trio.CancelScope]] = {}  # a circuit's two copies, while both run

    async def _relay_data(src: INetStream, dst: INetStream, *args: Any) -> None:
        circuit = frozenset((id(src), id(dst)))
        with trio.CancelScope() as scope:
            directions.setdefault(circuit, []).append(scope)
            try:
                await relay_data(src, dst, *args)
            finally:
                for other in directions.pop(circuit, []):
                    other.cancel()  # the other copy may wait in a read that a reset does not wake
                await _reset(src)
                await _reset(dst)

    async def _close_stream(stream: INetStream | None) -> None:
        return None

    library._relay_data = _relay_data  # type: ignore[method-assign]
    library._close_stream = _close_stream  # type: ignore[method-assign]


def hop_handler(host: IHost, policy: RelayPolicy) -> Callable[[INetStream], Any]:
    """The HOP protocol of a relay: Rules 1-2 of ``p2p.relay_limits`` before py-libp2p's handler."""
    # Found here: py-libp2p's relay logs every circuit's normal end ("stream is reset") at ERROR, twice.
    logging.getLogger("libp2p.relay.circuit_v2.protocol").setLevel(logging.CRITICAL)
    library = CircuitV2Protocol(host, limits=_lib_limits(policy.limits), allow_hop=True)
    end_circuits_with_a_reset(library)

    async def handle(stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        ip = stream_ip(stream)
        if is_relayed(stream):  # the spec: no reservation or circuit over a relayed connection
            await _status(stream, StatusCode.PERMISSION_DENIED)
            return
        with trio.fail_after(HOP_TIMEOUT_S):
            msg = await read_delimited_msg(stream, HopMessage)
        now = time.monotonic()
        if msg.type == HopMessage.RESERVE:
            msg.ClearField("peer")  # item 33: the reservation is the connection's peer's, whatever it says
            refused = policy.admit_reservation(peer.to_base58(), ip, now)
            if refused is not None:
                log.info("relay: reservation refused to %s at %s (%s)", peer, ip, refused)
                await _status(stream, StatusCode.RESERVATION_REFUSED)
                return
            await library._handle_reserve(stream, msg)
        elif msg.type == HopMessage.CONNECT:
            try:
                dst = ID(msg.peer.id).to_base58()
            except Exception:
                await _status(stream, StatusCode.MALFORMED_MESSAGE)
                return
            circuit, refused = policy.admit_circuit(peer.to_base58(), ip, dst, now)
            if circuit is None:
                log.info("relay: circuit %s -> %s refused (%s)", peer, dst, refused)
                code = StatusCode.NO_RESERVATION if refused == "no_reservation" else StatusCode.RESOURCE_LIMIT_EXCEEDED
                await _status(stream, code)
                return
            try:
                await library._handle_connect(stream, msg)
            finally:
                policy.end_circuit(circuit)
        else:
            await _status(stream, StatusCode.UNEXPECTED_MESSAGE)

    return handle


@dataclass
class Reservation:
    relay_addr: str  # /ip4/.../tcp/.../p2p/<relay>
    relay: str
    expires_s: float  # monotonic
    renew_s: float  # monotonic: renew from then on
    limit_bytes: int
    limit_duration_s: int


@dataclass
class RelayClient:
    """The reservations a node holds, and the candidates it may reserve on."""

    peer_id: str
    candidates: tuple[str, ...] = ()
    want: int = 2
    held: dict[str, Reservation] = field(default_factory=dict)  # relay peer id -> reservation
    on_change: list[Callable[[], None]] = field(default_factory=list)
    circuit_limits: dict[str, dict[str, int]] = field(default_factory=dict)  # peer dialled -> its relay's limits
    upgrades_ms: list[float] = field(default_factory=list)  # relayed -> direct, each success
    active: bool = False  # False while the node is public: it holds and advertises none

    def circuit_addrs(self) -> list[str]:
        return [circuit_addr(r.relay_addr, self.peer_id) for r in self.held.values()]

    def holds(self, relay: str) -> bool:
        return relay in self.held

    def _changed(self) -> None:
        for callback in list(self.on_change):
            callback()

    def drop(self, relay: str, why: str) -> None:
        if self.held.pop(relay, None) is not None:
            log.info("relay %s: reservation dropped (%s)", relay, why)
            self._changed()

    def drop_all(self, why: str) -> None:
        for relay in list(self.held):
            self.drop(relay, why)

    async def keep(self, node: Any) -> None:
        """One round: drop reservations whose relay went away, renew those due, reserve up to ``want``."""
        connected = set(node.connected_peers())
        for relay in [r for r in self.held if r not in connected]:
            self.drop(relay, "relay disconnected")
        now = time.monotonic()
        for reservation in [r for r in self.held.values() if now >= r.renew_s]:
            try:
                await self._reserve(node, reservation.relay_addr)
            except PeerUnreachableError as exc:
                self.drop(reservation.relay, f"renewal failed: {exc}")
        for addr in self.candidates:
            if len(self.held) >= self.want:
                break
            relay = addr.rsplit("/p2p/", 1)[-1]
            if relay in self.held or relay == self.peer_id:
                continue
            try:
                await self._reserve(node, addr)
            except PeerUnreachableError as exc:
                log.info("relay %s: no reservation (%s)", relay, exc)

    async def _reserve(self, node: Any, addr: str) -> None:
        relay = addr.rsplit("/p2p/", 1)[-1]
        renewing = relay in self.held
        if relay not in node.connected_peers():
            await node.connect(addr)
        try:
            with trio.fail_after(HOP_TIMEOUT_S):
                stream = await node.host.new_stream(ID.from_base58(relay), [PROTOCOL_ID])
                try:
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
                    resp = await read_delimited_msg(stream, HopMessage)
                finally:
                    await stream.close()
        except trio.TooSlowError as exc:
            raise PeerUnreachableError(f"relay {relay} did not answer a reservation", peer=relay) from exc
        except Exception as exc:  # py-libp2p's stream errors, a malformed answer
            raise PeerUnreachableError(f"reservation on {relay} failed: {exc}", peer=relay) from exc
        status = StatusCode(resp.status) if resp.HasField("status") else StatusCode.UNUSED
        if status != StatusCode.OK or not resp.HasField("reservation"):
            raise PeerUnreachableError(f"relay {relay} refused a reservation ({status.name})", peer=relay)
        now_wall, now = time.time(), time.monotonic()
        ttl = max(1.0, resp.reservation.expire - now_wall)
        self.held[relay] = Reservation(addr, relay, now + ttl, now + ttl / 2,
                                       int(resp.limit.data) if resp.HasField("limit") else 0,
                                       int(resp.limit.duration) if resp.HasField("limit") else 0)
        if not renewing:
            log.info("relay %s: reserved for %d s; reachable at %s", relay, ttl, circuit_addr(addr, self.peer_id))
            self._changed()


def stop_handler(host: IHost, client: RelayClient) -> Callable[[INetStream], Any]:
    """STOP: a relayed connection is accepted only from a relay this node holds a reservation on."""
    library = CircuitV2Protocol(host, allow_hop=False)

    async def handle(stream: INetStream) -> None:
        relay = stream.muxed_conn.peer_id.to_base58()
        if not client.holds(relay):
            log.info("relay: STOP from %s refused: no reservation there", relay)
            await stream.reset()
            return
        await library._handle_stop_stream(stream)

    return handle


def advertise_circuits(host: IHost, client: RelayClient) -> None:
    """The host's addresses (identify, DHT provider records, offers) include its circuit addresses.

    Found here: py-libp2p's ``get_addrs`` strips every address's first ``/p2p/`` part and appends the
    host's own id, which turns ``<relay>/p2p/R/p2p-circuit`` into ``<relay>/p2p/<us>``; so the circuit
    addresses are appended after that step, whole.
    """
    own = host.get_addrs

    def get_addrs() -> list[multiaddr.Multiaddr]:
        return list(own()) + [multiaddr.Multiaddr(a) for a in client.circuit_addrs()]

    host.get_addrs = get_addrs  # type: ignore[method-assign]


def relay_candidates(relays: Sequence[str], bootstrap: Sequence[str]) -> tuple[str, ...]:
    """The relays a private node reserves on: those configured, else the bootstrap hosts it knows."""
    return tuple(relays or bootstrap)


def relay_handlers(host: IHost, config: Any, node: Callable[[], Any]) -> dict[str, Callable[[INetStream], Any]]:
    """HOP when ``config.relay_hop`` is set; STOP when the node may keep reservations. Registered before
    the first dial (docs/LIBP2P.md item 31); ``node()`` is the Node once built."""
    dcutr = DCUtRProtocol(host)
    host._suanli_dcutr = dcutr  # type: ignore[attr-defined]  # upgrade_to_direct's
    handlers: dict[str, Callable[[INetStream], Any]] = {str(DCUTR_PROTOCOL_ID): dcutr._handle_dcutr_stream}
    if config.relay_hop is not None:
        hop: list[Callable[[INetStream], Any]] = []

        async def handle_hop(stream: INetStream) -> None:
            if not hop:
                hop.append(hop_handler(host, node().hop))
            await hop[0](stream)

        handlers[HOP] = handle_hop
    if config.relays is not None:
        stop: list[Callable[[INetStream], Any]] = []

        async def handle_stop(stream: INetStream) -> None:
            if not stop:
                stop.append(stop_handler(host, node().relay))
            await stop[0](stream)

        handlers[STOP] = handle_stop
    return handlers


REACH_INTERVAL_S = 5.0


async def serve_reachability(node: Any, *, interval_s: float = REACH_INTERVAL_S) -> None:
    """Every ``interval_s``: classify the node (p2p.reach), log a change, and while it is not public and
    may keep reservations, keep them (``RelayClient.keep``). Runs until cancelled; never fatal."""
    from p2p.reach import reachability_of

    client: RelayClient = node.relay
    while True:
        reach = reachability_of(node)
        if reach != node.reachability:
            log.info("reachability %s -> %s", node.reachability, reach)
            node.reachability = reach
            for callback in list(client.on_change):
                callback()
        if node.config.relays is not None and client.candidates:
            try:
                if reach == "public":
                    client.drop_all("the node is public")
                else:
                    await client.keep(node)
            except Exception as exc:  # a background loop of open_host must never end the node
                log.warning("relay reservations: %r", exc)
        await trio.sleep(interval_s if len(client.held) >= min(client.want, len(client.candidates)) else 1.0)
