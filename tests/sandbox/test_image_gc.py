"""Buyer images: least recently used first over the budget, never one in use, never the operator's."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import uuid

import docker.errors
import pytest

from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.image_gc import (
    LEDGER_NAME,
    LoadedImage,
    choose_evictions,
    collect_buyer_images,
    record_loaded,
    record_used,
)
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


@contextlib.contextmanager
def _disk_refuses_writes(limit_bytes: int = 16):
    """Writes past ``limit_bytes`` fail with EFBIG, as on a full disk (RLIMIT_FSIZE, this process only)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _ledger_with(tmp_path, *images: LoadedImage) -> bytes:
    ledger = tmp_path / LEDGER_NAME
    ledger.write_text(json.dumps({i.image_id: {"size_bytes": i.size_bytes, "loaded_ms": i.loaded_ms,
                                               "used_ms": i.used_ms} for i in images}))
    return ledger.read_bytes()


def test_a_ledger_write_the_disk_refuses_does_not_fail_the_job(tmp_path, caplog):
    before = _ledger_with(tmp_path, A, B, C)
    with _disk_refuses_writes():
        noted = record_used(tmp_path, B.image_id, now_ms=99)
    assert noted is False
    assert "not noted in the buyer image ledger" in caplog.text
    assert (tmp_path / LEDGER_NAME).read_bytes() == before  # the old ledger, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_NAME]  # no temporary file left behind
    assert record_used(tmp_path, B.image_id, now_ms=99) is True  # the disk has room again
    assert json.loads((tmp_path / LEDGER_NAME).read_text())[B.image_id]["used_ms"] == 99


def test_a_stale_temporary_name_does_not_block_the_ledger(tmp_path):
    _ledger_with(tmp_path, A)
    (tmp_path / "buyer-images.tmp").mkdir()  # what a fixed temporary name would collide with
    assert record_used(tmp_path, A.image_id, now_ms=7) is True
    assert json.loads((tmp_path / LEDGER_NAME).read_text())[A.image_id]["used_ms"] == 7


@pytest.mark.docker
def test_a_loaded_image_the_ledger_cannot_enter_does_not_fail_the_job(tmp_path, docker_client, caplog):
    image_id = _tiny_image(docker_client)
    try:
        before = _ledger_with(tmp_path, A)
        with _disk_refuses_writes():
            entered = record_loaded(tmp_path, docker_client, image_id, now_ms=5)
        assert entered is False and "not entered in the buyer image ledger" in caplog.text
        assert (tmp_path / LEDGER_NAME).read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_NAME]
    finally:
        docker_client.api.remove_image(image_id, force=True)
