"""Layer-aware shipping through a real provider and buyer (issue 19, p2p.job_wire Rule 3): two images
that share the demo image's base layer; the second job's archive goes without it, and the bytes on the
wire show it."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import replace

import docker.errors
import pytest
import trio
from image_helpers import build_from

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, archive_layers, run_job
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.envelope import sign_record
from p2p.identity import generate_key
from p2p.market_records import JobSpec
from p2p.testing import loopback_config, open_host
from sandbox.archive import read_digests
from settlement.astore import open_store

pytestmark = pytest.mark.docker


def built_and_saved(client, tmp_path, demo_image: str, name: str, own_bytes: int) -> tuple[bytes, str]:
    """An image FROM the demo image plus one file of ``own_bytes``, saved (``docker save``) and then
    removed from the engine, so that a provider must receive it: (the archive, its image id)."""
    image_id = build_from(client, tmp_path, demo_image, name, os.urandom(own_bytes))
    archive = b"".join(client.api.get_image(image_id))
    client.api.remove_image(image_id, force=True)
    return archive, image_id


async def job(runtime, host, buyer, store, archive: bytes, image_id: str) -> tuple[int, list[str]]:
    """One job shipping ``archive``: (the image bytes sent, the statuses seen)."""
    sha = bytes.fromhex(read_digests(archive).archive_sha256.removeprefix("sha256:"))
    base = make_proposal(buyer, runtime.offer, image_id, ["sh", "-c", "echo shipped"]).record
    proposal = sign_record(replace(base, job=JobSpec(image_id, sha, base.job.command, {}, None)), buyer)
    deal = await negotiate_with(host, runtime.setup.key.peer_id, buyer, proposal)
    await store.put_agreement(deal.agreement)
    sent: list[int] = [0]
    phases: list[str] = []
    hooks = BuyerHooks(on_status=lambda phase, detail: phases.append(phase),
                       on_progress=lambda what, done, total: sent.__setitem__(0, total) if what == "image" else None)
    with trio.fail_after(120):
        outcome = await run_job(host, buyer, store, deal, b"", archive, hooks, trio.Event(), now_ms(),
                                image_layers=archive_layers(archive))
    assert outcome.exit_code == 0
    return sent[0], phases


async def test_the_second_archive_ships_only_its_own_layer(tmp_path, docker_client, demo_image):
    own = 256 << 10
    first, first_id = built_and_saved(docker_client, tmp_path, demo_image, f"a{uuid.uuid4().hex[:6]}", own)
    second, second_id = built_and_saved(docker_client, tmp_path, demo_image, f"b{uuid.uuid4().hex[:6]}", own)
    buyer = generate_key()
    try:
        async with open_provider(local_setup(tmp_path / "provider", generate_key())) as runtime, \
                open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as host, \
                open_store(tmp_path / "buyer.db") as store:
            sent_first, phases_first = await job(runtime, host, buyer, store, first, first_id)
            sent_second, phases_second = await job(runtime, host, buyer, store, second, second_id)
        assert sent_first == len(first)  # nothing held yet: the whole archive
        assert "need_image" in phases_first and "need_image" in phases_second
        # the base layer (busybox, ~2 MB) stayed home: only the second image's own layer and the metadata
        assert sent_second < own + 64 * 1024 < len(second), (sent_second, len(second))
        for image_id in (first_id, second_id):
            assert docker_client.api.inspect_image(image_id)["Id"] == image_id
        layers = archive_layers(second)
        assert hashlib.sha256(b"").digest() not in layers and len(layers) >= 2
    finally:
        for image_id in (first_id, second_id):
            try:
                docker_client.api.remove_image(image_id, force=True)
            except docker.errors.NotFound:
                pass
