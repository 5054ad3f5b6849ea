"""Image uploads through real hosts and a real provider (issue 13, M2): streamed to disk, cut off when
they stall, and never in anyone else's way."""

from __future__ import annotations

import os
import platform
import tracemalloc
import uuid
from dataclasses import replace

import pytest
import trio
from cli_helpers import images_removed_after

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.envelope import sign_record
from p2p.framing import FramedStream
from p2p.identity import generate_key
from p2p.job_wire import CHUNK_BYTES, MAX_FRAME_BYTES, PROTOCOL_ID, Chunk, Fail, Start, Status, decode_message
from p2p.market_records import JobSpec
from p2p.testing import loopback_config, open_host, wait_until
from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.image_gc import LEDGER_NAME
from sandbox.images import read_busybox
from settlement.astore import open_store

pytestmark = pytest.mark.docker

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def fresh_image(payload: bytes = b""):
    """A busybox image the provider cannot have yet (a new marker each call), with ``payload`` in it."""
    entries = [LayerEntry("bin", "dir"), LayerEntry("bin/busybox", "file", 0o755, data=read_busybox()),
               LayerEntry("bin/sh", "symlink", 0o777, target="busybox"),
               LayerEntry("marker", "file", 0o644, data=uuid.uuid4().hex.encode()),
               LayerEntry("payload", "file", 0o644, data=payload)]
    entries += [LayerEntry(d, "dir", 0o755, 65534, 65534) for d in ("io", "io/in", "io/out")]
    return image_archive(layer_tar(entries), {"User": "65534:65534", "Env": ["PATH=/bin"]}, architecture=_ARCH)


async def deal_for(runtime, client, buyer, digests, command):
    base = make_proposal(buyer, runtime.offer, digests.config_digest, command).record
    job = JobSpec(digests.config_digest, bytes.fromhex(digests.archive_sha256[7:]), base.job.command, {}, None)
    return await negotiate_with(client, runtime.setup.key.peer_id, buyer, sign_record(replace(base, job=job), buyer))


async def open_upload(client, runtime, deal, declared: int) -> FramedStream:
    """A hand-written buyer: starts the job and waits until the provider asks for the image."""
    framed = FramedStream(await client.open_stream(runtime.setup.key.peer_id, PROTOCOL_ID),
                          max_frame_bytes=MAX_FRAME_BYTES)
    await framed.send_frame(Start(deal.agreement.record_id, 0, declared).encode())
    while (payload := await framed.receive_frame()) is not None:
        msg = decode_message(payload)
        if isinstance(msg, Status) and msg.phase == "need_image":
            return framed
    raise AssertionError("the provider never asked for the image")


async def until_fail(framed: FramedStream) -> Fail | None:
    while (payload := await framed.receive_frame()) is not None:
        msg = decode_message(payload)
        if isinstance(msg, Fail):
            return msg
    return None


@pytest.fixture
def images(docker_client):
    with images_removed_after(docker_client) as ids:
        yield ids


async def test_a_slow_uploader_never_holds_up_another_buyer(tmp_path, images):
    """Alice trickles a 64 MiB upload within the rules (1 MiB every 2 s); Bob's job, with an image of its
    own to upload, runs to the end while Alice's upload is still open."""
    provider_key, alice, bob = generate_key(), generate_key(), generate_key()
    alice_archive, alice_digests = fresh_image()
    bob_archive, bob_digests = fresh_image()
    images += [alice_digests.config_digest, bob_digests.config_digest]
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(alice, bootstrap=(runtime.node.addrs()[0],))) as alice_host, \
                open_host(loopback_config(bob, bootstrap=(runtime.node.addrs()[0],))) as bob_host, \
                open_store(tmp_path / "bob.db") as store:
            alice_deal = await deal_for(runtime, alice_host, alice, alice_digests, ["true"])
            bob_deal = await deal_for(runtime, bob_host, bob, bob_digests, ["sh", "-c", "echo bob"])
            await store.put_agreement(bob_deal.agreement)
            alice_stream = await open_upload(alice_host, runtime, alice_deal, 64 << 20)
            alice_done = trio.Event()

            async def trickle() -> None:
                with trio.move_on_after(120):
                    while True:
                        for _ in range((1 << 20) // CHUNK_BYTES):
                            await alice_stream.send_frame(Chunk("image", bytes(CHUNK_BYTES)).encode())
                        await trio.sleep(2)
                alice_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                await trio.sleep(1)  # Alice's upload is under way
                lines: list[bytes] = []
                with trio.fail_after(60):
                    outcome = await run_job(bob_host, bob, store, bob_deal, b"", bob_archive,
                                            BuyerHooks(on_log=lambda s, d: lines.append(d)), trio.Event(), now_ms())
                assert outcome.exit_code == 0 and lines == [b"bob"]
                assert not alice_done.is_set()  # Alice's upload was open throughout
                nursery.cancel_scope.cancel()


async def test_a_stalled_upload_is_cut_off_within_one_window(tmp_path, monkeypatch, images):
    """One chunk, then silence: cut off after one window, long before the whole budget
    (30 s + 1 s per MiB declared) would run out; the capacity goes back."""
    import node.provider_job as pj

    monkeypatch.setattr(pj, "UPLOAD_WINDOW_S", 2.0, raising=False)
    provider_key, buyer = generate_key(), generate_key()
    _, digests = fresh_image()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            deal = await deal_for(runtime, client, buyer, digests, ["true"])
            framed = await open_upload(client, runtime, deal, 64 << 20)
            await framed.send_frame(Chunk("image", bytes(CHUNK_BYTES)).encode())
            with trio.fail_after(30):  # the whole budget would be 94 s
                fail = await until_fail(framed)
            assert fail is not None and "stalled" in fail.detail
            await wait_until(lambda: not runtime.services.active, timeout_s=10)
            assert runtime.ledger.free().cpu_millis == runtime.ledger.cpu_millis
            assert pj.IMAGE_UPLOADS.used_bytes == 0


async def test_provider_memory_does_not_grow_with_the_upload_size(tmp_path, docker_client, images):
    """A 64 MiB image crosses the overlay, is checked, loaded and run; the process's Python heap peaks
    far below 64 MiB (the old provider held the whole archive, and a copy, in memory)."""
    provider_key, buyer = generate_key(), generate_key()
    archive, digests = fresh_image(os.urandom(64 << 20))
    images.append(digests.config_digest)
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await deal_for(runtime, client, buyer, digests, ["sh", "-c", "wc -c < /payload"])
            await store.put_agreement(deal.agreement)
            lines: list[bytes] = []
            tracemalloc.start()
            try:
                with trio.fail_after(300):
                    outcome = await run_job(client, buyer, store, deal, b"", archive,
                                            BuyerHooks(on_log=lambda s, d: lines.append(d)), trio.Event(), now_ms())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert outcome.exit_code == 0 and lines == [str(64 << 20).encode()]
    print(f"64 MiB image upload: Python heap peak {peak / (1 << 20):.1f} MiB")
    assert peak < 16 << 20
    ledger = (tmp_path / "provider" / "images" / LEDGER_NAME).read_text()
    assert digests.config_digest in ledger  # tracked for Suanli's own collection
    assert docker_client.api.inspect_image(digests.config_digest)["RepoTags"] == []
