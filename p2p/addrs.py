"""Addresses: parsed from what a user wrote, advertised as peers can dial them, and what answered at one.

Rule 1: a wildcard listen address is advertised as one address per local IPv4 interface, loopback last.
Rule 2 (issue 17 item 11): an address that answers as another peer than its ``/p2p/`` part names is
``WrongPeerError``, naming the peer that answered (``open_host`` Rule 7).
"""

from __future__ import annotations

import re

import multiaddr
from libp2p.security.noise.exceptions import PeerIDMismatchesPubkey

from p2p.errors import ConfigError, PeerUnreachableError


def advertised_addrs(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Listen addresses as peers can dial them: a wildcard (``0.0.0.0``) becomes one address per
    local IPv4 interface, loopback last.

    py-libp2p advertises ``/ip4/0.0.0.0/...`` as is (in identify, DHT records and offers), which no
    remote peer can dial; and its dialer tries one address per transport (item 23), so the first
    address must be a routable one.
    """
    from multiaddr.utils import get_network_addrs

    out: list[multiaddr.Multiaddr] = []
    for addr in candidates:
        try:
            ip4 = addr.value_for_protocol("ip4")
        except Exception:
            ip4 = None
        if ip4 != "0.0.0.0":
            out.append(addr)
            continue
        port = addr.value_for_protocol("tcp")
        ips = [ip for ip in (get_network_addrs(4) or []) if not ip.startswith("127.")]
        out += [multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}") for ip in ips]
        out.append(multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))
    return list(dict.fromkeys(out))


def parse_multiaddr(text: str, *, what: str, need_peer: bool) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ConfigError(f"{what} {text!r} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3Koo...)",
                          key=what, value=text) from exc
    if need_peer:
        try:
            addr.value_for_protocol("p2p")
        except Exception as exc:
            raise ConfigError(f"{what} {text!r} lacks the /p2p/<peer id> part", key=what, value=text) from exc
    return addr


class WrongPeerError(PeerUnreachableError):
    """An address answered as another peer than the one its ``/p2p/`` part names (Rule 2)."""


def answered_as(exc: BaseException) -> str | None:
    """Rule 2: the peer id that answered, when py-libp2p's Noise handshake refused it for not being the peer
    dialled (``PeerIDMismatchesPubkey``, deep in the dial's chain of MultiErrors and causes); else None."""
    todo, seen = [exc], 0
    while todo and seen < 64:
        e = todo.pop()
        seen += 1
        if isinstance(e, PeerIDMismatchesPubkey):
            found = re.search(r"remote_peer_id_from_pubkey=(\w+)", str(e))
            return found.group(1) if found else "another peer"
        todo += [*getattr(e, "errors", ()), *(c for c in (e.__cause__, e.__context__) if c is not None)]
    return None
