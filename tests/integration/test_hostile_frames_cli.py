"""Issue 13, H1 through the real CLI: one hostile record with a map key sent as msgpack ``bin``.

- A hostile peer (a real py-libp2p host on 127.0.0.1, in this process) provides the "any" capability
  key in the DHT, answers ``/suanli/offer/1.0.0`` with an offer it signed validly whose body has a bin
  key, and gossips it. `suanli offers` and `suanli run --dry-run` (real processes, joined through a
  real `suanli bootstrap`) ask it, exit 0 with no traceback, and list the honest provider (`suanli
  provide`, real Docker). `suanli agent` collects offers through the same `collect_offers`.
- Mid-job, bin-keyed frames from a buyer are bad frames to the provider's job handler, which runs on.
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

from market.service import negotiate_with
from node.provider import open_provider
from node.provider_job import send_blob
from node.testing import local_setup, make_proposal
from p2p import dht
from p2p.codec import unpack
from p2p.envelope import countersign, domain, open_signed
from p2p.framing import FramedStream, serve_framed
from p2p.gossip import OFFERS_TOPIC
from p2p.host import HostConfig, open_host
from p2p.identity import generate_key
from p2p.job_wire import (
    MAX_FRAME_BYTES,
    PROTOCOL_ID,
    Cancel,
    Countersign,
    Done,
    ReceiptMsg,
    Start,
    Status,
    decode_message,
)
from p2p.market_records import Offer
from p2p.offer_query import MAX_OFFER_FRAME_BYTES, OFFER_PROTOCOL
from p2p.receipt_records import FINAL, Receipt
from p2p.testing import loopback_config
from settlement.audit import audit, read_inputs
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
async def test_offers_and_run_survive_a_hostile_offer_with_a_bin_key_and_list_the_honest_one(tmp_path, demo_image):
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
            asked_by_offers = len(asked)
            dry = await _cli("run", "--dry-run", "--json", "--local", "--bootstrap", boot_addr, "--data-dir",
                             str(tmp_path / "buyer"), "--image", demo_image, "--wait", "8", "--cpus", "0.5",
                             "--memory", "64m", "--", "true")
        stderr = done.stderr.decode()
        assert done.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
        providers = {row["provider"] for row in json.loads(done.stdout)["offers"]}
        assert ready["peer_id"] in providers and hostile_key.peer_id not in providers, (providers, stderr[-2000:])
        assert asked_by_offers, "`suanli offers` never asked the hostile peer: the test did not reach the decoder"
        stderr = dry.stderr.decode()
        assert dry.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
        candidates = {c["provider"] for c in json.loads(dry.stdout)["candidates"]}
        assert candidates == {ready["peer_id"]}, (candidates, stderr[-2000:])
        assert len(asked) > asked_by_offers, "`suanli run` never asked the hostile peer"
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


@pytest.mark.docker
async def test_a_bin_keyed_frame_mid_job_is_one_bad_frame_and_the_job_goes_on(tmp_path, demo_image):
    """The provider's job handler (node.provider_job.read_buyer) meets bin keys in the job frame itself
    and in the receipt inside a countersignature, between honest countersignatures; the job runs on
    until the buyer cancels, every receipt countersigned, and the provider's database audits clean."""
    provider_key, buyer = generate_key(), generate_key()
    bad_frames = [_bin_keyed(Countersign(b"x" * 80).encode(), "receipt"),
                  _bin_keyed(Cancel("buyer_cancel").encode(), "reason"),
                  _bin_keyed(Cancel("buyer_cancel").encode(), "t")]
    sent_bad = 0

    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await negotiate_with(client, runtime.setup.key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, ["sleep", "600"]))
            framed = FramedStream(await client.open_stream(runtime.setup.key.peer_id, PROTOCOL_ID),
                                  max_frame_bytes=MAX_FRAME_BYTES)
            await framed.send_frame(Start(deal.agreement.record_id, 0, 0).encode())
            receipts, done = [], None
            with trio.fail_after(60):
                while done is None and (payload := await framed.receive_frame()) is not None:
                    msg = decode_message(payload)
                    if isinstance(msg, Status) and msg.phase == "need_inputs":
                        await send_blob(framed, "inputs", b"")
                    elif isinstance(msg, ReceiptMsg):
                        signed = open_signed(msg.receipt, Receipt)
                        receipts.append(signed)
                        if signed.record.state != FINAL:
                            hostile_body = _bin_keyed(signed.body, "seq")
                            hostile = msgpack.packb({"body": hostile_body, "sigs": [signed.sigs[0], bytes(64)]},
                                                    use_bin_type=True)
                            for frame in (*bad_frames, Countersign(hostile).encode()):
                                await framed.send_frame(frame)
                                sent_bad += 1
                        await framed.send_frame(Countersign(countersign(signed, buyer).to_bytes()).encode())
                        if signed.record.seq == 3:
                            await framed.send_frame(Cancel("buyer_cancel").encode())
                    elif isinstance(msg, Done):
                        done = msg
    assert done is not None and done.reason == "buyer_cancel", done
    assert sent_bad >= 12 and receipts[-1].record.state == FINAL and receipts[-1].record.seq >= 4
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok, result.report.findings
    assert result.report.last_seq == receipts[-1].record.seq
