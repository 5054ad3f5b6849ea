"""Listen addresses, checked before a node starts (issue 17 item 8); pure but for ``try_bind``.

Rule 1: a listen address is ``/ip4/ADDRESS/tcp/PORT`` or ``/ip6/ADDRESS/tcp/PORT`` with PORT in 0..65535
(0: the system chooses). Anything else (a typo, ``/udp``, ``/dns4``, a ``/p2p`` suffix) is one
``ConfigError`` line naming the address, before any host is built: py-libp2p's own parser raised deep
inside its nurseries (a 78-line traceback), listened on every interface for ``/dns4/...``, and listened on
nothing at all for ``/udp`` while the node said it was ready.
Rule 2: ``try_bind`` binds a plain socket (SO_REUSEADDR only, as every server does) to the address and
closes it: an address this machine does not have, a port in use or a privileged port is one line naming
the address and the system's reason, instead of a node that is "ready" with no address.
Rule 3: no SO_REUSEPORT (p2p.workarounds, "listeners share their port"): a second process that binds our
port fails here, instead of silently taking half of our incoming connections.

Imports no libp2p and no trio: ``node.config`` checks a provider's ``listen`` with it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from p2p.errors import ConfigError

FORM = "/ip4/ADDRESS/tcp/PORT or /ip6/ADDRESS/tcp/PORT, e.g. /ip4/0.0.0.0/tcp/4001"


@dataclass(frozen=True)
class ListenAddr:
    text: str
    family: int  # socket.AF_INET or AF_INET6
    ip: str
    port: int


def parse_listen_addr(text: str, *, what: str = "listen address") -> ListenAddr:
    """Rule 1: the address, or ConfigError (one line)."""
    parts = text.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        raise ConfigError(f"{what} {text!r} is not of the form {FORM}", key=what, value=text)
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        raise ConfigError(f"{what} {text!r}: {parts[2]!r} is not an IP{parts[1][2]} address",
                          key=what, value=text) from None
    if ip.version != int(parts[1][2]):
        raise ConfigError(f"{what} {text!r}: {parts[2]!r} is not an IP{parts[1][2]} address", key=what, value=text)
    if not parts[4].isascii() or not parts[4].isdigit() or int(parts[4]) > 65535:
        raise ConfigError(f"{what} {text!r}: the port must be a number in 0..65535 (0: any free port)",
                          key=what, value=text)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return ListenAddr(text, family, str(ip), int(parts[4]))


def parse_listen_addrs(texts: Iterable[str], *, what: str = "listen address") -> tuple[ListenAddr, ...]:
    addrs = tuple(parse_listen_addr(t, what=what) for t in texts)
    if not addrs:
        raise ConfigError(f"give at least one {what} ({FORM})", key=what)
    return addrs


def check_listening(listening: Iterable[object], wanted: Iterable[str]) -> None:
    """py-libp2p logs a listener that failed at debug level and runs on (p2p.host Rule 6): a node that
    listens on fewer addresses than it was given (``listening``: the swarm's listeners, by multiaddr
    text) stops with one line instead."""
    import multiaddr

    have = {str(k) for k in listening}
    for text in wanted:
        if str(multiaddr.Multiaddr(text)) not in have:
            raise ConfigError(f"cannot listen on {text} (the address was free a moment ago: another process "
                              f"may have taken it)", key="listen address", value=text)


def try_bind(addr: ListenAddr, *, what: str = "listen address") -> None:
    """Rule 2: ConfigError (one line) when this process cannot listen at ``addr`` now."""
    try:
        with socket.socket(addr.family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr.ip, addr.port))
            sock.listen(1)
    except OSError as exc:
        hint = {errno.EADDRINUSE: "; another process listens there (choose another port, or 0 for any)",
                errno.EADDRNOTAVAIL: "; this machine has no such address (0.0.0.0 listens on all of them)",
                errno.EACCES: "; ports below 1024 need privileges"}.get(exc.errno or 0, "")
        raise ConfigError(f"cannot listen on {addr.text}: {exc.strerror or exc}{hint}", key=what,
                          value=addr.text) from exc
