"""p2p.listen (issue 17 item 8): listen addresses parsed by a table, and the host's own check that it
listens where it was told (for a port taken between the trial bind and py-libp2p's)."""

from __future__ import annotations

import socket

import pytest

from p2p.errors import ConfigError
from p2p.host import open_host
from p2p.listen import ListenAddr, parse_listen_addr, parse_listen_addrs, try_bind
from p2p.testing import loopback_config


@pytest.mark.parametrize("text, expected", [
    ("/ip4/0.0.0.0/tcp/4001", ListenAddr("/ip4/0.0.0.0/tcp/4001", socket.AF_INET, "0.0.0.0", 4001)),
    ("/ip4/127.0.0.1/tcp/0", ListenAddr("/ip4/127.0.0.1/tcp/0", socket.AF_INET, "127.0.0.1", 0)),
    ("/ip6/::/tcp/65535", ListenAddr("/ip6/::/tcp/65535", socket.AF_INET6, "::", 65535)),
])
def test_good_addresses(text, expected):
    assert parse_listen_addr(text) == expected


@pytest.mark.parametrize("text", [
    "", "garbage", "ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp", "/ip4/127.0.0.1/tcp/1/", "/ip4/127.0.0.1/udp/1",
    "/ip4/127.0.0.1/tcp/1/ws", "/dns4/localhost/tcp/1", "/dns/localhost/tcp/1", "/ip4/localhost/tcp/1",
    "/ip4/1.2.3/tcp/1", "/ip4/::1/tcp/1", "/ip6/1.2.3.4/tcp/1", "/ip4/127.0.0.1/tcp/65536", "/ip4/127.0.0.1/tcp/-1",
    "/ip4/127.0.0.1/tcp/1e3", "/ip4/127.0.0.1/tcp/٣", "/ip4/127.0.0.1/tcp/ 1", "/ip4/127.0.0.1/tcp/1\n",
])
def test_bad_addresses_are_one_line(text):
    with pytest.raises(ConfigError) as info:
        parse_listen_addr(text)
    assert "\n" not in str(info.value).replace(repr(text), "") and repr(text) in str(info.value)


def test_no_address_at_all():
    with pytest.raises(ConfigError, match="at least one"):
        parse_listen_addrs([])


def test_try_bind_names_the_reason():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on /ip4/127.0.0.1/tcp/{port}: .*another process"):
            try_bind(parse_listen_addr(f"/ip4/127.0.0.1/tcp/{port}"))


async def test_a_listener_py_libp2p_could_not_open_stops_the_host(monkeypatch):
    """Before: the failure was logged at debug level and the node ran, 'ready' with no address."""
    monkeypatch.setattr("p2p.host.try_bind", lambda addr: None)  # the port is taken after the trial bind
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on /ip4/127.0.0.1/tcp/{port}"):
            async with open_host(loopback_config(listen=(f"/ip4/127.0.0.1/tcp/{port}",))):
                pytest.fail("the host started without its listener")


async def test_no_other_socket_can_share_a_hosts_port():
    """p2p.workarounds.own_listen_ports: py-libp2p set SO_REUSEPORT, so any process that asked for port
    sharing could bind our port and take part of our incoming connections."""
    async with open_host(loopback_config()) as node:
        port = int(node.addrs()[0].split("/")[4])
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
