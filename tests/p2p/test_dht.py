"""DHT discovery: capability keys, provider records found by every node, routing tables that fill."""

from __future__ import annotations

import hashlib

import pytest
import trio

from p2p import dht
from p2p.identity import b58decode
from p2p.testing import loopback_config, open_network, wait_until


@pytest.mark.parametrize("models, cpu_only, names", [
    ((), False, ["any"]),
    (("NVIDIA H200", "nvidia h200"), False, ["any", "gpu/any", "gpu/nvidia-h200"]),
    (("RTX 4090", "A100-SXM4-80GB"), False, ["any", "gpu/any", "gpu/a100-sxm4-80gb", "gpu/rtx-4090"]),
    (("RTX 4090",), True, ["any"]),
])
def test_capability_names(models, cpu_only, names):
    assert dht.capability_names(models, cpu_only=cpu_only) == names


def test_capability_keys_are_sha256_multihashes_that_libp2p_decodes_as_cids():
    key = dht.capability_key("gpu/nvidia-h200")
    digest = hashlib.sha256(b"suanli/cap/gpu/nvidia-h200").digest()
    assert key.startswith("Qm") and b58decode(key) == b"\x12\x20" + digest
    assert dht.key_bytes(key) == b"\x12\x20" + digest  # not hex- or UTF-8-decoded (item 19)
    assert dht.capability_key("any") != dht.capability_key("gpu/any")


def _config(i, bootstrap):
    # node 0: bootstrap; nodes 1-3: H200 providers; node 4: CPU-only provider; the rest: DHT servers
    # except the last two, which are buyers (DHT clients).
    mode = "client" if i >= 10 else "server"
    return loopback_config(bootstrap=bootstrap, dht_mode=mode, routing_refresh_s=30.0)


async def test_every_node_finds_every_provider_and_routing_tables_fill():
    with trio.fail_after(90):
        async with open_network(12, _config) as nodes:
            servers = [n for n in nodes if n.config.dht_mode == "server"]
            # Routing tables fill beyond the bootstrap peer (a naive join knows only that one).
            await wait_until(lambda: all(dht.routing_table_size(n) >= 5 for n in servers),
                             timeout_s=45, interval_s=0.25)
            h200 = nodes[1:4]
            async with trio.open_nursery() as nursery:
                for p in h200:
                    nursery.start_soon(dht.provide, p, dht.capability_names(["NVIDIA H200"]))
                nursery.start_soon(dht.provide, nodes[4], dht.capability_names())
            want_gpu = {p.peer_id for p in h200}
            for n in nodes:
                got = [info.peer_id.to_base58() for info in await dht.find_providers(n, "gpu/nvidia-h200")]
                assert sorted(got) == sorted(want_gpu), n.peer_id  # each once (item 17: duplicates)
            anyone = {info.peer_id.to_base58() for info in await dht.find_providers(nodes[-1], "any")}
            assert anyone == want_gpu | {nodes[4].peer_id}
            assert await dht.find_providers(nodes[-1], "gpu/rtx-4090") == []


async def test_a_provider_looking_up_its_own_key_still_finds_the_others():
    # item 17: the stock lookup returns as soon as the local store holds one record (here: our own).
    async with open_network(4, lambda i, b: loopback_config(bootstrap=b)) as nodes:
        for n in nodes[1:]:
            await dht.provide(n, ["gpu/any"])
        asker = nodes[1]
        stock = await asker.dht.find_providers(dht.capability_key("gpu/any"))
        ours = {i.peer_id.to_base58() for i in await dht.find_providers(asker, "gpu/any")}
        assert ours == {n.peer_id for n in nodes[1:]}
        assert len({i.peer_id for i in stock}) <= len(ours)


async def test_a_provider_service_announces_its_capabilities_and_keeps_them_current():
    names = ["any", "gpu/any"]
    async with open_network(3, lambda i, b: loopback_config(bootstrap=b)) as nodes:
        provider, buyer = nodes[1], nodes[2]
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: dht.serve_provider_records(
                provider, lambda: list(names), settle_s=0.2, interval_s=0.5, task_status=task_status))

            async def found(name):
                return [i.peer_id.to_base58() for i in await dht.find_providers(buyer, name)]

            with trio.fail_after(20):
                while await found("gpu/any") != [provider.peer_id]:  # noqa: ASYNC110
                    await trio.sleep(0.2)
                names.append("gpu/nvidia-h200")  # the offer changed: the next round announces it
                while await found("gpu/nvidia-h200") != [provider.peer_id]:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
