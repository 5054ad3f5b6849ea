"""Circuit relay v2 through real py-libp2p hosts on 127.0.0.1: a reservation, a relayed stream, and the
relay's policy (p2p.relay_limits) applied before py-libp2p's handler sees a request (item 33)."""

from __future__ import annotations

import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from p2p.host import open_host
from p2p.identity import generate_key
from p2p.relay import advertise_circuits, is_circuit
from p2p.relay_limits import RelayLimits
from p2p.testing import loopback_config, wait_until

ECHO = "/suanli/test/echo/1"


async def _echo(stream):
    data = await stream.read(100)
    await stream.write(data)
    await stream.close()


async def test_a_buyer_reaches_a_private_node_through_the_relay_then_directly():
    async with open_host(loopback_config(relay_hop=RelayLimits())) as relay:
        boot = (relay.addrs()[0],)
        async with open_host(loopback_config(bootstrap=boot, relays=(), reachability="private",
                                             handlers={ECHO: _echo})) as private:
            await wait_until(lambda: len(private.relay.held) == 1, timeout_s=10)
            circuits = [a for a in private.addrs() if is_circuit(a)]
            assert circuits == [f"{boot[0]}/p2p-circuit/p2p/{private.peer_id}"]
            async with open_host(loopback_config(bootstrap=boot)) as buyer:
                stream = await buyer.open_stream(private.peer_id, ECHO, circuits)  # only the circuit
                await stream.write(b"hello")
                assert await stream.read(100) == b"hello"
                # It came through the relay, then upgraded (on loopback the direct dial always works) and
                # closed the relayed connection before the stream was opened.
                assert relay.hop is not None and relay.hop.circuits_total == 1
                assert buyer.relay.circuit_limits[private.peer_id]["bytes"] == RelayLimits().circuit_bytes
                assert len(buyer.relay.upgrades_ms) == 1
                conn = buyer.host.get_network().connections[ID.from_base58(private.peer_id)]
                conns = conn if isinstance(conn, list) else [conn]
                assert conns and not any("p2p-circuit" in str(a) for c in conns for a in c.get_transport_addresses())


async def _hop(node, relay_peer: str, msg: HopMessage) -> HopMessage:
    with trio.fail_after(10):
        stream = await node.host.new_stream(ID.from_base58(relay_peer), [PROTOCOL_ID])
        await write_delimited_msg(stream, msg)
        return await read_delimited_msg(stream, HopMessage)


async def test_a_reservation_is_the_askers_own_whatever_peer_it_names():
    """Item 33: py-libp2p reserved for the id in the request; a peer could take slots in others' names."""
    async with open_host(loopback_config(relay_hop=RelayLimits())) as relay:
        boot = (relay.addrs()[0],)
        victim = generate_key().peer_id
        async with open_host(loopback_config(bootstrap=boot)) as asker:
            msg = HopMessage(type=HopMessage.RESERVE, peer=CircuitPeerId(id=ID.from_base58(victim).to_bytes()))
            resp = await _hop(asker, relay.peer_id, msg)
            assert resp.status == StatusCode.OK
            assert relay.hop is not None
            assert set(relay.hop.reservations) == {asker.peer_id}


async def test_reservations_past_the_per_ip_limit_are_refused_and_others_keep_theirs():
    limits = RelayLimits(reservations_per_ip=2)
    async with open_host(loopback_config(relay_hop=limits)) as relay:
        boot = (relay.addrs()[0],)
        statuses = []
        async with open_host(loopback_config(bootstrap=boot)) as a, open_host(loopback_config(bootstrap=boot)) as b, \
                open_host(loopback_config(bootstrap=boot)) as c:
            for node in (a, b, c, a):  # a's second RESERVE renews its own
                statuses.append((await _hop(node, relay.peer_id, HopMessage(type=HopMessage.RESERVE))).status)
            assert statuses == [StatusCode.OK, StatusCode.OK, StatusCode.RESERVATION_REFUSED, StatusCode.OK]
            assert relay.hop is not None
            assert set(relay.hop.reservations) == {a.peer_id, b.peer_id}
            assert relay.hop.refused == {"reservations_per_ip": 1}
            # A CONNECT to a peer without a reservation is refused by the policy, before py-libp2p.
            resp = await _hop(c, relay.peer_id, HopMessage(
                type=HopMessage.CONNECT, peer=CircuitPeerId(id=ID.from_base58(generate_key().peer_id).to_bytes())))
            assert resp.status == StatusCode.NO_RESERVATION


async def test_circuit_addresses_survive_py_libp2ps_address_rewriting():
    """Found here: get_addrs strips an address's first /p2p/ part and appends ours, which turned
    <relay>/p2p/R/p2p-circuit into <relay>/p2p/<us>; advertise_circuits appends them whole."""
    async with open_host(loopback_config()) as node:
        relay_addr = "/ip4/127.0.0.1/tcp/4001/p2p/" + generate_key().peer_id
        node.relay.held["x"] = type("R", (), {"relay_addr": relay_addr})()  # type: ignore[assignment]
        advertise_circuits(node.host, node.relay)  # idempotent in effect: one more wrapper
        circuit = f"{relay_addr}/p2p-circuit/p2p/{node.peer_id}"
        assert node.addrs().count(circuit) >= 1
        node.relay.held.clear()
        assert not any(is_circuit(a) for a in node.addrs())


async def test_circuits_past_the_per_peer_limit_are_refused_and_freed_when_they_end():
    limits = RelayLimits(circuits_per_peer=2)
    async with open_host(loopback_config(relay_hop=limits)) as relay:
        boot = (relay.addrs()[0],)
        async with open_host(loopback_config(bootstrap=boot, relays=(), reachability="private",
                                             handlers={ECHO: _echo})) as private, \
                open_host(loopback_config(bootstrap=boot)) as greedy:
            await wait_until(lambda: len(private.relay.held) == 1, timeout_s=10)
            target = ID.from_base58(private.peer_id).to_bytes()
            held, statuses = [], []
            for _ in range(3):
                stream = await greedy.host.new_stream(ID.from_base58(relay.peer_id), [PROTOCOL_ID])
                await write_delimited_msg(stream, HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=target)))
                with trio.fail_after(10):
                    statuses.append((await read_delimited_msg(stream, HopMessage)).status)
                held.append(stream)
            assert statuses == [StatusCode.OK, StatusCode.OK, StatusCode.RESOURCE_LIMIT_EXCEEDED]
            assert relay.hop is not None and relay.hop.refused == {"circuits_per_peer": 1}
            for stream in held:
                await stream.reset()
            # end_circuits_with_a_reset: before it, each circuit stayed open after its source left (the
            # other direction kept reading a half-closed stream) until the 600 s duration limit.
            await wait_until(lambda: not relay.hop.circuits, timeout_s=3)  # type: ignore[union-attr]
            assert set(relay.hop.reservations) == {private.peer_id}  # the reservation is unaffected


async def test_dht_provider_records_carry_the_circuit_address():
    from p2p import dht

    async with open_host(loopback_config(relay_hop=RelayLimits())) as relay:
        boot = (relay.addrs()[0],)
        async with open_host(loopback_config(bootstrap=boot, relays=(), reachability="private")) as private:
            await wait_until(lambda: len(private.relay.held) == 1, timeout_s=10)
            assert (await dht.provide(private, ["any"])) == {"any": True}
            async with open_host(loopback_config(bootstrap=boot, dht_mode="client")) as buyer:
                found = []
                await dht.find_providers(buyer, "any", on_found=found.append)
                addrs = [str(a) for info in found if info.peer_id.to_base58() == private.peer_id for a in info.addrs]
                assert private.relay.circuit_addrs()[0] in addrs
