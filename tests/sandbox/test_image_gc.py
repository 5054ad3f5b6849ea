"""Buyer images: least recently used first over the budget, never one in use, never the operator's."""

from __future__ import annotations

import uuid

import docker.errors
import pytest

from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.image_gc import LoadedImage, choose_evictions, collect_buyer_images, record_loaded, record_used
from sandbox.images import load_image_archive

A, B, C = (LoadedImage(f"sha256:{c * 64}", 100, 0, used) for c, used in (("a", 3), ("b", 1), ("c", 2)))


@pytest.mark.parametrize("images, in_use, budget, evicted", [
    ([A, B, C], frozenset(), 300, []),
    ([A, B, C], frozenset(), 200, [B.image_id]),  # the least recently used
    ([A, B, C], frozenset(), 100, [B.image_id, C.image_id]),
    ([A, B, C], frozenset({B.image_id}), 200, [C.image_id]),  # in use: the next one goes
    ([A, B, C], frozenset({A.image_id, B.image_id, C.image_id}), 0, []),
    ([], frozenset(), 0, []),
])
def test_choose_evictions(images, in_use, budget, evicted):
    assert choose_evictions(images, in_use, budget) == evicted


def _tiny_image(client):
    layer = layer_tar([LayerEntry("f", "file", 0o644, data=uuid.uuid4().bytes)])
    data, digests = image_archive(layer, {"Labels": {"t": uuid.uuid4().hex}}, architecture="amd64")
    return load_image_archive(client, data, archive_sha256=digests.archive_sha256, image_id=digests.config_digest)


@pytest.mark.docker
def test_collection_removes_only_idle_untagged_buyer_images(tmp_path, docker_client):
    ids = [_tiny_image(docker_client) for _ in range(3)]
    try:
        for at, image_id in enumerate(ids):
            record_loaded(tmp_path, docker_client, image_id, now_ms=at)
        record_used(tmp_path, ids[0], now_ms=10)  # ids[1] is now the least recently used
        tag = f"operator-{uuid.uuid4().hex[:8]}"
        docker_client.api.tag(ids[2], "suanli-test-operator", tag)  # the operator took ids[2] over
        removed = collect_buyer_images(docker_client, tmp_path, frozenset(), budget_bytes=0)
        assert removed == [ids[1], ids[0]]
        assert docker_client.api.inspect_image(ids[2])["Id"] == ids[2]
        for image_id in ids[:2]:
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.api.inspect_image(image_id)
        # In use: kept, however far over the budget.
        again = _tiny_image(docker_client)
        ids.append(again)
        record_loaded(tmp_path, docker_client, again, now_ms=20)
        assert collect_buyer_images(docker_client, tmp_path, frozenset({again}), budget_bytes=0) == []
        assert docker_client.api.inspect_image(again)["Id"] == again
    finally:
        for image_id in ids:
            try:
                docker_client.api.remove_image(image_id, force=True)
            except docker.errors.NotFound:
                pass
