"""Reaching a peer through a relay, and leaving the relay for a direct connection (issue 15).

- ``connect_some_way``: a peer whose addresses include ``/p2p-circuit`` ones is dialled at its direct
  addresses first (``DIRECT_FIRST_S``), then through each relay in turn (``dial_circuit``: CONNECT, then
  the ordinary Noise/Yamux upgrade of the relayed stream), then ``upgrade_to_direct``.
- ``upgrade_to_direct``: DCUtR (libp2p/specs relay/DCUtR.md; py-libp2p's ``DCUtRProtocol``, whose handler
  ``p2p.relay.relay_handlers`` registered before the first dial) up to ``DIRECT_ATTEMPTS`` times within
  ``DIRECT_UPGRADE_S``; on success the relayed connection is closed before any Suanli stream uses it.
- ``relay_refusal``: a job whose bulk does not fit a relayed connection is refused before any bid.

Rule 1: every wait has a bound; a relay or peer that does not answer is a failed try
(``PeerUnreachableError``), never a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from p2p.errors import PeerUnreachableError
from p2p.relay import CIRCUIT, HOP_TIMEOUT_S
from p2p.relay_limits import needs_direct

log = logging.getLogger("suanli.p2p.relay")


def known_addrs(node: Any, pid: ID) -> list[str]:
    try:
        return [str(a) for a in node.host.get_peerstore().addrs(pid)]
    except Exception:  # py-libp2p raises for a peer it has never heard of
        return []


async def dial_circuit(node: Any, addr: str, pid: ID | None = None) -> dict[str, int]:
    """Connect to a peer (``pid``, else the one ``addr`` ends in) through the relay ``addr`` names; returns
    the relay's limits for the circuit (``bytes``, ``duration_s``). ``PeerUnreachableError`` when the relay
    or the peer says no."""
    relay_part, _, dest_part = addr.partition(CIRCUIT)
    dest = pid.to_base58() if pid is not None else dest_part.rsplit("/p2p/", 1)[-1]
    addr = f"{relay_part}{CIRCUIT}/p2p/{dest}"
    relay = relay_part.rsplit("/p2p/", 1)[-1]
    try:
        dest_id, relay_id = ID.from_base58(dest), ID.from_base58(relay)
    except Exception as exc:
        raise PeerUnreachableError(f"not a circuit address: {addr}", peer=dest) from exc
    if relay not in node.connected_peers():
        await node.connect(relay_part)
    try:
        with trio.fail_after(HOP_TIMEOUT_S):
            stream = await node.host.new_stream(relay_id, [PROTOCOL_ID])
            await write_delimited_msg(stream, HopMessage(type=HopMessage.CONNECT,
                                                         peer=CircuitPeerId(id=dest_id.to_bytes())))
            resp = await read_delimited_msg(stream, HopMessage)
    except trio.TooSlowError as exc:
        raise PeerUnreachableError(f"relay {relay} did not answer", peer=dest, addr=[addr]) from exc
    except Exception as exc:
        raise PeerUnreachableError(f"relay {relay}: {exc}", peer=dest, addr=[addr]) from exc
    status = StatusCode(resp.status) if resp.HasField("status") else StatusCode.UNUSED
    if status != StatusCode.OK:
        await stream.reset()
        raise PeerUnreachableError(f"relay {relay} could not reach {dest} ({status.name})", peer=dest, addr=[addr])
    limit = {"bytes": int(resp.limit.data), "duration_s": int(resp.limit.duration)} if resp.HasField("limit") else {}
    raw = RawConnection(stream=stream, initiator=True, connection_type=ConnectionType.RELAYED,
                        addresses=[multiaddr.Multiaddr(addr)])
    try:
        with trio.fail_after(HOP_TIMEOUT_S):
            await node.host.upgrade_outbound_connection(raw, dest_id)
    except Exception as exc:
        await stream.reset()
        raise PeerUnreachableError(f"upgrading the relayed connection to {dest} failed: {exc}", peer=dest,
                                   addr=[addr]) from exc
    return limit


DIRECT_FIRST_S = 3.0


async def connect_some_way(node: Any, pid: ID, direct: Sequence[str], circuits: Sequence[str]) -> None:
    """Connect to ``pid``: at a direct address (at most ``DIRECT_FIRST_S``), else through each circuit in
    turn. The limits of the circuit used are kept in ``node.relay.circuit_limits``."""
    if direct:
        await node._learn_addrs(pid, direct)
        try:
            with trio.move_on_after(DIRECT_FIRST_S):
                await node.host.connect(PeerInfo(pid, node.host.get_peerstore().addrs(pid)))
                return
        except Exception as exc:  # unreachable directly: try the relays
            log.debug("direct dial to %s failed: %r", pid, exc)
    errors = []
    for addr in circuits:
        try:
            node.relay.circuit_limits[pid.to_base58()] = await dial_circuit(node, addr, pid)
        except PeerUnreachableError as exc:
            errors.append(str(exc))
            continue
        await upgrade_to_direct(node, pid)
        return
    raise PeerUnreachableError(f"cannot reach {pid} directly or through a relay: {'; '.join(errors)}",
                               peer=pid.to_base58(), addr=list(direct) + list(circuits))


DIRECT_UPGRADE_S = 6.0
DIRECT_ATTEMPTS = 3  # the spec: up to 3 attempts


def is_direct(node: Any, pid: ID) -> bool:
    conns = node.host.get_network().connections.get(pid) or []
    conns = conns if isinstance(conns, list) else [conns]
    return any(not any(CIRCUIT in str(a) for a in c.get_transport_addresses()) for c in conns)


async def upgrade_to_direct(node: Any, pid: ID, *, budget_s: float = DIRECT_UPGRADE_S) -> bool:
    """After a relayed connect: DCUtR (libp2p/specs relay/DCUtR.md, py-libp2p's implementation) up to
    ``DIRECT_ATTEMPTS`` times within ``budget_s``; on success the relayed connection is closed at once,
    before any Suanli stream uses it, so nothing after depends on the relay. True when direct."""
    dcutr: DCUtRProtocol | None = getattr(node.host, "_suanli_dcutr", None)  # relay_handlers made it
    started = time.monotonic()
    with trio.move_on_after(budget_s):
        for attempt in range(1, DIRECT_ATTEMPTS + 1):
            if dcutr is not None and await dcutr.initiate_hole_punch(pid) and is_direct(node, pid):
                break
            log.info("direct upgrade to %s: attempt %d failed", pid, attempt)
    took_ms = (time.monotonic() - started) * 1000
    if not is_direct(node, pid):
        log.info("direct upgrade to %s failed after %.0f ms: staying on the relay", pid, took_ms)
        return False
    node.relay.upgrades_ms.append(took_ms)
    conns = node.host.get_network().connections.get(pid) or []
    for conn in list(conns if isinstance(conns, list) else [conns]):
        if all(CIRCUIT in str(a) for a in conn.get_transport_addresses()):
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await conn.close()
    log.info("direct connection to %s %.0f ms after the relayed one", pid, took_ms)
    return True


def relay_refusal(node: Any, peer: str, bulk_bytes: int) -> str | None:
    """Why a job for ``peer`` cannot go ahead on the current connection (None: it can): only when it is
    relayed (the upgrade failed) and the relay's byte limit is too small (``relay_limits.needs_direct``)."""
    try:
        pid = ID.from_base58(peer)
    except Exception:
        return None
    if pid not in node.host.get_network().connections or is_direct(node, pid):
        return None
    return needs_direct(bulk_bytes, node.relay.circuit_limits.get(peer, {}).get("bytes", 0))
