"""Whether a node can be dialled: ``public``, ``private`` or ``unknown`` (issue 15).

The rule (``classify``, pure) is the simplest honest one we could test, not AutoNAT:

- an operator may say it (``reachability = "public"`` or ``"private"``);
- an operator who sets ``announce`` addresses says the node is reachable there: ``public``;
- otherwise every peer we connect to tells us, in identify, the address our connection came from.
  A NAT rewrites that address, so when a peer saw one of our own interface addresses there is no
  NAT between us (``public``), and when peers saw only addresses we do not have, a NAT is in the way
  (``private``). With no observation yet (no peer connected) it is ``unknown``.

What it does not prove: a host with a public address behind a firewall that drops inbound
connections reads ``public``. AutoNAT's dial-back would catch that; py-libp2p's AutoNAT service is
not wired in yet (docs/OVERLAY.md, "Reachability").

A node that is not ``public`` keeps relay reservations (``p2p.relay.RelayClient``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Literal

Reachability = Literal["public", "private", "unknown"]


def classify(local_ips: Iterable[str], observed_ips: Iterable[str], *, announced: bool) -> Reachability:
    if announced:
        return "public"
    observed = set(observed_ips)
    if not observed:
        return "unknown"
    return "public" if observed & set(local_ips) else "private"


def _ip_of(addr: Any) -> str | None:
    for proto in ("ip4", "ip6"):
        try:
            return str(ipaddress.ip_address(addr.value_for_protocol(proto)))
        except Exception:
            continue
    return None


def observed_ips(host: Any) -> list[str]:
    """The addresses peers have told us (identify's observed address) our connections came from."""
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return []
    found: list[str] = []
    try:
        addrs = list(manager.addrs(min_observers=1))
    except Exception:
        addrs = []
    for addr in addrs:
        ip = _ip_of(addr)
        if ip is not None and "/p2p-circuit" not in str(addr) and ip not in found:
            found.append(ip)
    return found


def local_ips(host: Any) -> list[str]:
    found: list[str] = []
    try:
        addrs = list(host.get_transport_addrs()) + list(host.get_addrs())
    except Exception:
        addrs = []
    for addr in addrs:
        ip = _ip_of(addr)
        if ip is not None and "/p2p-circuit" not in str(addr) and ip not in found:
            found.append(ip)
    return found


def reachability_of(node: Any) -> Reachability:
    """The node's reachability: as its operator set it, else by ``classify``."""
    if node.config.reachability in ("public", "private"):
        return node.config.reachability  # type: ignore[no-any-return]
    return classify(local_ips(node.host), observed_ips(node.host), announced=bool(node.config.announce))
