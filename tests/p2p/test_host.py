"""open_host: identity, listen addresses, joining with back-off, order of registration, shutdown."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel
from libp2p.kad_dht.common import PROTOCOL_ID as KAD
from libp2p.peer.id import ID

from p2p.errors import ConfigError
from p2p.host import PeerUnreachableError, open_host
from p2p.identity import generate_key
from p2p.testing import count_trio_tasks, live_threads, loopback_config, port_accepts, tcp_port_of, wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _noop(stream):
    await stream.close()


async def test_peer_id_is_the_keys_and_addresses_are_full_multiaddrs():
    key = generate_key()
    async with open_host(loopback_config(key=key)) as node:
        assert node.peer_id == key.peer_id == node.host.get_id().to_base58()
        [addr] = node.addrs()
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith(f"/p2p/{key.peer_id}")
        assert tcp_port_of(addr) > 0


async def test_a_fixed_listen_port_is_honoured():
    port = _free_port()
    async with open_host(loopback_config(listen=(f"/ip4/127.0.0.1/tcp/{port}",))) as node:
        assert tcp_port_of(node.addrs()[0]) == port


async def test_joining_retries_with_back_off_until_the_bootstrap_is_up():
    boot_key, port = generate_key(), _free_port()
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot_key.peer_id}"
    joined = trio.Event()

    async def late_bootstrap():
        await trio.sleep(0.6)  # the joiner's first attempts fail
        async with open_host(loopback_config(key=boot_key, listen=(f"/ip4/127.0.0.1/tcp/{port}",))):
            await joined.wait()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_bootstrap)
            async with open_host(loopback_config(bootstrap=(boot_addr,), connect_attempts=8)) as node:
                assert boot_key.peer_id in node.connected_peers()
                assert node.dht.get_routing_table_size() == 1
                joined.set()


async def test_no_bootstrap_answering_is_an_error_unless_allowed():
    nobody = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{generate_key().peer_id}"
    with trio.fail_after(20), pytest.raises(PeerUnreachableError):
        async with open_host(loopback_config(bootstrap=(nobody,), connect_attempts=2,
                                             connect_backoff_s=0.05)):
            pass
    lenient = loopback_config(bootstrap=(nobody,), connect_attempts=1, require_bootstrap=False)
    async with open_host(lenient) as n:
        assert n.connected_peers() == []


@pytest.mark.parametrize("field, value", [
    ("bootstrap", ("/ip4/127.0.0.1/tcp/4001",)),  # no /p2p/ part
    ("bootstrap", ("not a multiaddr",)),
    ("listen", ("/ip4/999.0.0.1/tcp/0",)),
])
async def test_bad_addresses_are_config_errors(field, value):
    with pytest.raises(ConfigError):
        async with open_host(loopback_config(**{field: value})):
            pass


async def test_handlers_and_dht_are_known_to_peers_that_join_later():
    # Registered before dialing (docs/LIBP2P.md item 31, issue 7): identify tells the peer about them.
    async with open_host(loopback_config(handlers={"/t/mine/1": _noop})) as a:
        async with open_host(loopback_config(bootstrap=(a.addrs()[0],), dht_mode="client")) as b:
            def protocols():
                try:
                    return set(b.host.get_peerstore().get_protocols(ID.from_base58(a.peer_id)) or ())
                except Exception:
                    return set()
            await wait_until(lambda: {"/t/mine/1", str(KAD)} <= protocols(), timeout_s=10)
            # b is a DHT client: it does not serve KAD
            with pytest.raises(PeerUnreachableError):
                await a.open_stream(b.peer_id, str(KAD))


async def test_cancelling_a_running_node_cleans_up():
    await trio.lowlevel.checkpoint()
    tasks, threads = count_trio_tasks(), live_threads()
    ports = []
    with trio.move_on_after(1.0):
        async with open_host(loopback_config()) as a:
            async with open_host(loopback_config(bootstrap=(a.addrs()[0],))) as b:
                ports += [tcp_port_of(a.addrs()[0]), tcp_port_of(b.addrs()[0])]
                await trio.sleep_forever()
    assert ports and not any(port_accepts(p) for p in ports)
    await wait_until(lambda: count_trio_tasks() == tasks, timeout_s=5)
    assert live_threads() == threads


async def test_a_node_rejoins_when_its_bootstrap_comes_back():
    boot_key, port = generate_key(), _free_port()
    listen = (f"/ip4/127.0.0.1/tcp/{port}",)
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot_key.peer_id}"

    gone = trio.Event()

    async def bootstrap(stop, *, task_status=trio.TASK_STATUS_IGNORED):
        async with open_host(loopback_config(key=boot_key, listen=listen)) as boot:
            task_status.started(boot)
            await stop.wait()
        gone.set()

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            first_stop = trio.Event()
            await nursery.start(bootstrap, first_stop)
            async with open_host(loopback_config(bootstrap=(boot_addr,), rejoin_interval_s=0.5)) as node:
                assert boot_key.peer_id in node.connected_peers()
                first_stop.set()  # the bootstrap goes away; the node stays up
                await wait_until(lambda: node.connected_peers() == [], timeout_s=10)
                await gone.wait()  # its listener closed: no two listeners share a port (issue 17 item 8)
                second_stop = trio.Event()
                await nursery.start(bootstrap, second_stop)  # back on the same address
                await wait_until(lambda: boot_key.peer_id in node.connected_peers(), timeout_s=20)
                second_stop.set()


async def test_a_wildcard_listen_address_is_advertised_as_dialable_addresses():
    async with open_host(loopback_config(listen=("/ip4/0.0.0.0/tcp/0",))) as a:
        addrs = a.addrs()
        assert addrs and not any("/0.0.0.0/" in x for x in addrs)
        assert addrs[-1].startswith("/ip4/127.0.0.1/tcp/")  # loopback last: remote dialers try the first
        async with open_host(loopback_config(bootstrap=(addrs[0],))) as b:
            assert a.peer_id in b.connected_peers()


async def test_announce_addresses_replace_the_listen_addresses():
    async with open_host(loopback_config(announce=("/ip4/203.0.113.7/tcp/4001",))) as a:
        assert a.addrs() == [f"/ip4/203.0.113.7/tcp/4001/p2p/{a.peer_id}"]


async def test_an_address_that_answers_as_another_peer_is_named_and_not_retried():
    """Rule 7 (issue 17 item 11): one attempt, the peer that answered named; joining says so."""
    from p2p.host import WrongPeerError

    async with open_host(loopback_config()) as real:
        wrong = generate_key().peer_id
        addr = real.addrs()[0].rsplit("/p2p/", 1)[0] + f"/p2p/{wrong}"
        async with open_host(loopback_config(dht_mode="client")) as node:
            with pytest.raises(WrongPeerError) as info:
                await node.connect(addr)
            assert info.value.actual == real.peer_id
            assert f"answered as peer {real.peer_id}, not {wrong}" in str(info.value)
        with trio.fail_after(5):  # not the six attempts of back-off an unreachable peer gets
            with pytest.raises(WrongPeerError, match="correct the peer id after /p2p/"):
                async with open_host(loopback_config(bootstrap=(addr,), dht_mode="client")):
                    pass
