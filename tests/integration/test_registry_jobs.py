"""Registry images through a real provider, real hosts, a real registry (Debian's docker-registry on
127.0.0.1) and the real engine (issue 19): pulled by digest before the job's clock starts, refused by
policy before any layer moves, and a pull that fails ends the job with nothing billed."""

from __future__ import annotations

import json
import os
import platform
import uuid
from dataclasses import replace

import docker.errors
import pytest
import trio
from cli_helpers import assert_audits_clean, images_removed_after, provider_on_overlay, run_cli_async

from market.negotiation import IMAGE_TOO_LARGE, REGISTRY_NOT_ALLOWED
from market.service import NegotiationRefused, negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.config import ImageSettings
from node.jobsession_buyer import JobFailed
from node.provider import open_provider
from node.testing import FAST_TERMS, local_setup, make_proposal
from p2p.envelope import sign_record
from p2p.identity import generate_key
from p2p.market_records import Prices
from p2p.receipt_records import Receipt
from p2p.testing import loopback_config, open_host
from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.image_gc import held_digests
from sandbox.images import read_busybox
from settlement.astore import open_store
from settlement.store import Store

pytestmark = pytest.mark.docker

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@pytest.fixture
def images(docker_client):
    with images_removed_after(docker_client) as ids:
        yield ids


def pushed_image(registry, client, images: list[str], payload_bytes: int = 0) -> tuple[str, str]:
    """A busybox image the engine has never seen, pushed to ``registry`` and then removed from the
    engine, so that a provider must pull it: (its registry reference, its image id)."""
    entries = [LayerEntry("bin", "dir"), LayerEntry("bin/busybox", "file", 0o755, data=read_busybox()),
               LayerEntry("bin/sh", "symlink", 0o777, target="busybox"),
               LayerEntry("marker", "file", 0o644, data=uuid.uuid4().hex.encode()),
               LayerEntry("payload", "file", 0o644, data=os.urandom(payload_bytes))]
    entries += [LayerEntry(d, "dir", 0o755, 65534, 65534) for d in ("io", "io/in", "io/out")]
    archive, digests = image_archive(layer_tar(entries), {"User": "65534:65534", "Env": ["PATH=/bin"]},
                                     architecture=_ARCH, repo_tag=f"suanli-test/reg:{uuid.uuid4().hex[:8]}")
    images.append(digests.config_digest)
    client.images.load(archive)
    digest = registry.push(client, digests.config_digest, "suanli/t")
    client.api.remove_image(digests.config_digest, force=True)
    return f"{registry.host}/suanli/t@{digest}", digests.config_digest


def setup_for(tmp_path, registry, **images_changes):
    settings = replace(ImageSettings(allowed_registries=(registry.host,)), **images_changes)
    return replace(local_setup(tmp_path / "provider", generate_key()), images=settings)


async def deal(runtime, host, buyer, ref, command=("sh", "-c", "echo pulled")):
    proposal = make_proposal(buyer, runtime.offer, ref, list(command))
    return await negotiate_with(host, runtime.setup.key.peer_id, buyer, sign_record(proposal.record, buyer))


def final_of(db, agreement_id: bytes):
    with Store(db) as store:
        return Receipt.decode(store.last_receipt(agreement_id)["body"])


async def test_a_job_pulled_by_digest_runs_and_audits_clean(tmp_path, registry, docker_client, images):
    ref, image_id = pushed_image(registry, docker_client, images)
    async with provider_on_overlay(tmp_path, images=ImageSettings(allowed_registries=(registry.host,))) as runtime:
        boot = runtime.node.addrs()[0]
        with trio.fail_after(180):
            code, out, err = await run_cli_async("run", "--local", "--bootstrap", boot, "--data-dir",
                                                 str(tmp_path / "buyer"), "--image", ref, "--wait", "2", "--cpus",
                                                 "0.5", "--memory", "128m", "--", "sh", "-c", "echo pulled")
        assert code == 0, err
        assert "pulled" in out
        attrs = docker_client.api.inspect_image(image_id)
        assert ref in attrs["RepoDigests"]  # the engine reports the agreed digest (node.jobimages Rule 3)
        digest = ref.rsplit("@", 1)[1]
        assert digest in held_digests(tmp_path / "p" / "images")  # the cache names it for the offer
        wanted = bytes.fromhex(digest.removeprefix("sha256:"))
        for _ in range(100):  # and the re-issued signed offer advertises it (market.matching ranks by it)
            if wanted in runtime.offer.record.images:
                break
            await trio.sleep(0.2)
        assert wanted in runtime.offer.record.images
        # a cheaper provider that lacks the image ranks after the one that holds it (market.matching Rule 1)
        cheap = replace(FAST_TERMS, prices=Prices({}, cpu_core_micros_per_s=10, memory_gib_micros_per_s=1))
        async with provider_on_overlay(tmp_path / "cheap", terms=cheap, bootstrap=(boot,)) as other:
            with trio.fail_after(120):
                code, out, err = await run_cli_async("run", "--dry-run", "--json", "--local", "--bootstrap", boot,
                                                     "--data-dir", str(tmp_path / "buyer"), "--image", ref, "--wait",
                                                     "3", "--cpus", "0.5", "--memory", "128m", "--", "true")
            assert code == 0, err
            plan = json.loads(out)["candidates"]
            assert [c["provider"] for c in plan] == [runtime.setup.key.peer_id, other.setup.key.peer_id], plan
            assert plan[0]["price_micros_per_s"] > plan[1]["price_micros_per_s"]
            assert plan[0]["image_cached"] and "image cached" in plan[0]["notes"]
            assert not plan[1]["image_cached"] and plan[1]["pull_bytes"] > 0, plan  # read from the manifest
    assert_audits_clean(tmp_path / "p" / "node.db", tmp_path / "buyer" / "buyer.db")


async def test_policy_refuses_before_any_layer_moves(tmp_path, registry, docker_client, images):
    ref, _ = pushed_image(registry, docker_client, images, payload_bytes=3 << 20)
    buyer = generate_key()
    for changes, reason in (({"allowed_registries": ()}, REGISTRY_NOT_ALLOWED),  # loopback only when listed
                            ({"max_image_mib": 1}, IMAGE_TOO_LARGE)):
        async with open_provider(setup_for(tmp_path / reason, registry, **changes)) as runtime, \
                open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as host:
            with trio.fail_after(60), pytest.raises(NegotiationRefused) as refused:
                await deal(runtime, host, buyer, ref)
            assert refused.value.fields["reason"] == reason
    assert not [r for r in registry.requests() if "/blobs/" in r and r.startswith("GET")]


@pytest.mark.parametrize("break_it", ["registry_dies", "tampered_layer"])
async def test_a_pull_that_fails_ends_the_job_with_nothing_billed(tmp_path, registry, docker_client, images,
                                                                  break_it):
    ref, image_id = pushed_image(registry, docker_client, images, payload_bytes=8 << 20)
    buyer = generate_key()
    if break_it == "tampered_layer":  # the registry serves other bytes under the layer's digest
        manifest, _ = registry.manifest("suanli/t", ref.rsplit("@", 1)[1])
        import json

        layer = json.loads(manifest)["layers"][0]["digest"]
        registry.blob_path(layer).write_bytes(os.urandom(1 << 20))
    async with open_provider(setup_for(tmp_path, registry)) as runtime, \
            open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as host, \
            open_store(tmp_path / "buyer.db") as store:
        agreed = await deal(runtime, host, buyer, ref)
        await store.put_agreement(agreed.agreement)
        phases: list[str] = []

        def on_status(phase: str, detail: str) -> None:
            phases.append(phase)
            if phase == "pulling_image" and break_it == "registry_dies":
                registry.stop()  # as the pull starts

        with trio.fail_after(120), pytest.raises(JobFailed) as failed:
            await run_job(host, buyer, store, agreed, b"", None, BuyerHooks(on_status=on_status), trio.Event(),
                          now_ms())
        assert failed.value.fields["reason"] in ("pull_failed", "image_mismatch", "registry_unreachable")
        assert "pulling_image" in phases and "running" not in phases
        with trio.fail_after(30):
            for job in list(runtime.services.active.values()):
                await job.finished.wait()
        final = final_of(tmp_path / "provider" / "node.db", agreed.agreement.record_id)
        assert final.state == "final" and final.amount_micros == 0 and final.metered_ms == 0
    with pytest.raises(docker.errors.NotFound):  # nothing of the broken image is left on the engine
        docker_client.api.inspect_image(image_id)
