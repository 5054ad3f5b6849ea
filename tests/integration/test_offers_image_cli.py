"""``suanli offers --image`` through the real CLI (issue 19, node.commands.network Rule 1): a provider whose
image cache holds a buyer's image (entered in its ledger as a load for a buyer enters it, sandbox.image_gc)
says so in its signed offer, and ``offers --image`` lists it for that image, named by local id or by a
registry reference with the same digest, and lists nobody for an image no provider holds."""

from __future__ import annotations

import json
import uuid

import docker.errors
import pytest
import trio
from cli_helpers import provider_on_overlay, run_cli_async

from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.image_gc import record_loaded
from sandbox.images import load_image_archive

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _buyer_image(client) -> str:  # noqa: ANN001
    """A small untagged image of this test's own, as a buyer's archive would leave one."""
    layer = layer_tar([LayerEntry("f", "file", 0o644, data=uuid.uuid4().bytes)])
    data, digests = image_archive(layer, {"Labels": {"suanli-test": uuid.uuid4().hex}}, architecture="amd64")
    return load_image_archive(client, data, archive_sha256=digests.archive_sha256, image_id=digests.config_digest)


async def _offers(boot: str, *extra: str) -> tuple[int, str, str]:
    return await run_cli_async("offers", "--local", "--bootstrap", boot, "--wait", "2", *extra)


async def test_offers_image_lists_the_provider_that_holds_it(tmp_path, docker_client):
    image_id = _buyer_image(docker_client)
    try:
        image_dir = tmp_path / "p" / "images"  # the provider's image folder (node.provider)
        image_dir.mkdir(parents=True)
        assert record_loaded(image_dir, docker_client, image_id, now_ms=1)
        by_registry = "127.0.0.1:5000/team/app@" + image_id
        nobody = "sha256:" + uuid.uuid4().hex * 2
        async with provider_on_overlay(tmp_path) as runtime:
            boot = runtime.node.addrs()[0]
            with trio.fail_after(120):
                while True:  # its first offer may precede the first reading of its cache (node.jobimages)
                    code, out, err = await _offers(boot, "--json", "--image", image_id)
                    assert code == 0, err
                    rows = json.loads(out)["offers"]
                    if rows:
                        break
                    await trio.sleep(1)
                code, out, err = await _offers(boot, "--json", "--image", by_registry)
                assert code == 0, err
                assert [r["provider"] for r in json.loads(out)["offers"]] == [rows[0]["provider"]]
                code, out, err = await _offers(boot, "--json", "--image", nobody)
                assert code == 0 and json.loads(out)["offers"] == [], (out, err)
                code, text, err = await _offers(boot, "--image", nobody)
                assert code == 0 and text.strip() == f"no provider of the 1 heard holds {nobody}", (text, err)
        (row,) = rows
        assert row["provider"] == runtime.setup.key.peer_id
        assert row["images"] == [image_id]
        assert (row["window_end_ms"], row["notice_ms"], row["preemptible"]) == (None, 0, False)  # no [owner]
    finally:
        try:
            docker_client.api.remove_image(image_id, force=True)
        except docker.errors.NotFound:
            pass
