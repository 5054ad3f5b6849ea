"""The image cache: least recently used first within the quota, never one in use, never the operator's;
the digests the offer advertises."""

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
    held_digests,
    make_room,
    record_loaded,
    record_pulled,
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


def _digest(c: str) -> str:
    return f"sha256:{c * 64}"


def _ledger_v2(tmp_path, *entries: tuple[str, int, str, list[str]]) -> None:
    """Entries (image id, used_ms, source, digests) of 100 bytes each, written as the ledger."""
    (tmp_path / LEDGER_NAME).write_text(json.dumps({
        image_id: {"size_bytes": 100, "loaded_ms": 0, "used_ms": used, "source": source, "digests": digests}
        for image_id, used, source, digests in entries}))


def test_held_digests_most_recently_used_first_and_bounded(tmp_path):
    _ledger_v2(tmp_path, (_digest("1"), 5, "loaded", []),
               (_digest("2"), 9, "pulled", [_digest("a"), _digest("b")]),
               (_digest("3"), 7, "pulled", [_digest("c")]))
    assert held_digests(tmp_path) == (_digest("a"), _digest("b"), _digest("2"), _digest("c"), _digest("3"),
                                      _digest("1"))
    assert held_digests(tmp_path, limit=4) == (_digest("a"), _digest("b"), _digest("2"), _digest("c"))
    assert held_digests(tmp_path, limit=0) == ()
    record_used(tmp_path, _digest("1"), now_ms=10)  # now the most recently used; its names stay whole
    assert held_digests(tmp_path, limit=2) == (_digest("1"), _digest("a"))
    assert json.loads((tmp_path / LEDGER_NAME).read_text())[_digest("2")]["digests"] == [_digest("a"), _digest("b")]


def test_an_old_ledger_reads_as_loaded_images(tmp_path):
    _ledger_with(tmp_path, A, B)  # the format before issue 19: no source, no digests
    assert held_digests(tmp_path) == (A.image_id, B.image_id)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"x": {}}', '{"sha256:%s": {"size_bytes": "1", "loaded_ms": 0, '
                                  '"used_ms": 0}}' % ("a" * 64), '{"sha256:%s": {"size_bytes": 1, "loaded_ms": 0, '
                                  '"used_ms": 0, "digests": ["latest"]}}' % ("a" * 64)])
def test_a_corrupt_ledger_reads_as_empty(tmp_path, text):
    (tmp_path / LEDGER_NAME).write_text(text)
    assert held_digests(tmp_path) == ()
    assert record_used(tmp_path, A.image_id, now_ms=1) is True  # and it is written anew when needed


def _size(client, image_id):
    return int(client.api.inspect_image(image_id)["Size"])


def _remove_all(client, ids):
    for image_id in ids:
        try:
            client.api.remove_image(image_id, force=True)
        except docker.errors.NotFound:
            pass


def _present(client, image_id) -> bool:
    try:
        client.api.inspect_image(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False


@pytest.mark.docker
def test_make_room_evicts_least_recently_used_within_the_quota(tmp_path, docker_client):
    ids = [_tiny_image(docker_client) for _ in range(3)]
    foreign = _tiny_image(docker_client)  # loaded by the test, never entered: not the cache's
    try:
        for at, image_id in enumerate(ids):
            record_loaded(tmp_path, docker_client, image_id, now_ms=at)
        record_used(tmp_path, ids[0], now_ms=10)  # the order, least recent first: ids[1], ids[2], ids[0]
        sizes = [_size(docker_client, i) for i in ids]
        quota = sum(sizes)
        assert make_room(docker_client, tmp_path, 0, frozenset(), quota) is True  # fits already
        assert all(_present(docker_client, i) for i in ids)
        # Room for ids[1]'s size: exactly the least recently used goes.
        assert make_room(docker_client, tmp_path, sizes[1], frozenset(), quota) is True
        assert [_present(docker_client, i) for i in ids] == [True, False, True]
        # ids[2] is in use: however far over, it stays, and ids[0] goes instead.
        assert make_room(docker_client, tmp_path, quota - sizes[2], frozenset({ids[2]}), quota) is True
        assert [_present(docker_client, i) for i in ids] == [False, False, True]
        # No room without evicting an image in use: False, and nothing is removed.
        assert make_room(docker_client, tmp_path, quota, frozenset({ids[2]}), quota) is False
        assert _present(docker_client, ids[2])
        assert held_digests(tmp_path) == (ids[2],)
        # Everything out of use and a quota of nothing: the ledger empties, the foreign image stays.
        assert make_room(docker_client, tmp_path, 0, frozenset(), 0) is True
        assert not _present(docker_client, ids[2]) and _present(docker_client, foreign)
        assert held_digests(tmp_path) == ()
        assert make_room(docker_client, tmp_path, 1, frozenset(), 0) is False  # larger than the quota itself
    finally:
        _remove_all(docker_client, [*ids, foreign])


@pytest.mark.docker
def test_an_image_a_container_uses_stays(tmp_path, docker_client):
    image_id = _tiny_image(docker_client)
    container = docker_client.api.create_container(image_id, command=["/f"])  # created, never started
    try:
        record_loaded(tmp_path, docker_client, image_id, now_ms=1)
        assert make_room(docker_client, tmp_path, 0, frozenset(), 0) is False  # the engine refuses: it stays
        assert _present(docker_client, image_id) and held_digests(tmp_path) == (image_id,)
    finally:
        docker_client.api.remove_container(container["Id"], force=True)
        _remove_all(docker_client, [image_id])


@pytest.mark.docker
def test_a_pulled_image_is_advertised_and_evicted_by_id(tmp_path, docker_client, registry):
    pushed = _tiny_image(docker_client)
    docker_client.api.tag(pushed, "suanli-test-gc", "keep")  # a name of its own, so the push leaves it
    manifest = None
    try:
        manifest = registry.push(docker_client, pushed, "gc/tiny")
        docker_client.api.remove_image("suanli-test-gc:keep")
        assert not _present(docker_client, pushed)
        name = f"{registry.host}/gc/tiny@{manifest}"
        docker_client.api.pull(name)
        image_id = docker_client.api.inspect_image(name)["Id"]
        assert image_id == pushed
        assert record_pulled(tmp_path, docker_client, image_id, [manifest], now_ms=3) is True
        assert held_digests(tmp_path) == (manifest, image_id)
        assert json.loads((tmp_path / LEDGER_NAME).read_text())[image_id]["source"] == "pulled"
        assert make_room(docker_client, tmp_path, 0, frozenset(), 0) is True
        assert not _present(docker_client, image_id)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.api.inspect_image(name)  # its RepoDigest went with it
    finally:
        _remove_all(docker_client, ["suanli-test-gc:keep", pushed])
