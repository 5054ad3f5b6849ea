"""Issue 13, H1 through the real CLI: one hostile record with a map key sent as msgpack ``bin``.

- A hostile peer (a real py-libp2p host on 127.0.0.1, in this process) provides the "any" capability
  key in the DHT, answers ``/suanli/offer/1.0.0`` with an offer it signed validly whose body has a bin
  key, and gossips it. `suanli offers` (a real process, joined through a real `suanli bootstrap`)
  asks it, exits 0 with no traceback, and lists the honest provider (`suanli provide`, real Docker).
- A crafted bundle file: a bin key in the bundle's own structure makes the file unusable (`suanli
  audit` exit 2, one line); a bin key inside a signed record of a well-formed bundle is a finding
  (exit 1, the JSON report says "malformed"). README: exit 0 clean, 1 findings, 2 unusable input.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cli_helpers as _h
import msgpack
import pytest
import trio

from market.records import Offer
from p2p import dht
from p2p.codec import unpack
from p2p.envelope import domain
from p2p.framing import serve_framed
from p2p.gossip import OFFERS_TOPIC
from p2p.host import HostConfig, open_host
from p2p.identity import generate_key
from p2p.offer_query import MAX_OFFER_FRAME_BYTES, OFFER_PROTOCOL
from settlement.testing import key_from_label, make_chain, make_offer

ROOT = Path(__file__).resolve().parents[2]


def _bin_keyed(body: bytes, key: str) -> bytes:
    return msgpack.packb({(k.encode() if k == key else k): v for k, v in unpack(body).items()}, use_bin_type=True)


def _hostile_offer(key, now_ms: int) -> bytes:
    """An envelope whose signature verifies, over an offer body whose "addrs" key is sent as bin."""
    body = _bin_keyed(make_offer(key, now_ms).encode(), "addrs")
    sig = key.sign(domain(Offer, "provider") + body)
    return msgpack.packb({"body": body, "sigs": [sig]}, use_bin_type=True)


async def _cli(*args: str, timeout_s: float = 90) -> trio.CompletedProcess:  # type: ignore[type-arg]
    with trio.fail_after(timeout_s):
        return await trio.run_process([sys.executable, "-m", "node.cli", *args], capture_stdout=True,
                                      capture_stderr=True, check=False, cwd=ROOT)


@pytest.mark.docker
@pytest.mark.slow
async def test_offers_survives_a_hostile_offer_with_a_bin_key_and_lists_the_honest_one(tmp_path, docker_client):
    procs = _h.Processes()
    try:
        boot_addr = await trio.to_thread.run_sync(_h.start_bootstrap, procs, tmp_path)
        config = tmp_path / "honest.toml"
        config.write_text(_h.PROVIDER_TOML.format(
            data_dir=tmp_path / "honest", bootstrap=boot_addr, cpu_price=40, interval_ms=1000,
            countersign_timeout_ms=3000, grace_ms=5000, exposure_cap_micros=1000))
        honest = procs.start("honest", [*_h.suanli(), "provide", "--config", str(config), "--json"])
        ready = await trio.to_thread.run_sync(honest.json_line, "the honest provider ready", 120)
        assert ready["event"] == "ready", ready

        hostile_key = generate_key()
        hostile = _hostile_offer(hostile_key, int(time.time() * 1000))
        asked: list[str] = []

        async def answer(framed) -> None:  # type: ignore[no-untyped-def]
            asked.append(framed.peer)
            await framed.receive()
            await framed.send_frame(hostile)
            await framed.close_write()

        handler = serve_framed(answer, protocol=OFFER_PROTOCOL, stream_budget_s=10,
                               max_frame_bytes=MAX_OFFER_FRAME_BYTES)
        host = HostConfig(key=hostile_key, listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=(boot_addr,),
                          handlers={OFFER_PROTOCOL: handler}, topics={OFFERS_TOPIC: None})
        async with open_host(host) as node:
            await dht.provide(node, [dht.ANY_COMPUTE])
            await node.pubsub.publish(OFFERS_TOPIC, hostile)
            done = await _cli("offers", "--bootstrap", boot_addr, "--json", "--local", "--wait", "8")
        stderr = done.stderr.decode()
        assert done.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
        providers = {row["provider"] for row in json.loads(done.stdout)["offers"]}
        assert ready["peer_id"] in providers and hostile_key.peer_id not in providers, (providers, stderr[-2000:])
        assert asked, "the buyer never asked the hostile peer: the test did not reach the decoder"
    finally:
        await trio.to_thread.run_sync(procs.stop_all)


async def test_audit_of_a_bundle_with_a_bin_key_is_unusable_or_a_finding_never_a_traceback(tmp_path):
    ev = make_chain(key_from_label("provider"), key_from_label("buyer"), 1)
    stored = ev.stored()
    chain = {"agreement": stored.agreement, "offer": None, "proposal": None, "receipts": []}

    structure = tmp_path / "structure.bundle"  # the bundle's own map: not a bundle at all
    structure.write_bytes(msgpack.packb({"chains": [{**chain, b"offer": None}], "t": "bundle", "v": 1},
                                        use_bin_type=True))
    assert len(structure.read_bytes()) < 1200
    done = await _cli("audit", str(structure))
    stderr = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().count("\n") == 0 and "malformed bundle (chain 0)" in stderr, stderr

    inside = tmp_path / "inside.bundle"  # a well-formed bundle whose signed agreement has a bin key
    bad = {**chain, "agreement": {**stored.agreement, "body": _bin_keyed(stored.agreement["body"], "buyer")}}
    inside.write_bytes(msgpack.packb({"chains": [bad], "t": "bundle", "v": 1}, use_bin_type=True))
    assert len(inside.read_bytes()) < 1200
    done = await _cli("audit", "--json", str(inside))
    stderr = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in stderr, stderr
    doc = json.loads(done.stdout)
    assert not doc["ok"] and doc["findings"] >= 1, doc
    assert "map keys must be text" in json.dumps(doc), doc
