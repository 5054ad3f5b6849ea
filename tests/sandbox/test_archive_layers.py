"""Layer-aware shipping: a partial archive lacks the layers the provider's store holds; the provider
rebuilds the clean archive from it and the store, checking every digest, or refuses (sandbox.archive
Rule 6)."""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid

import docker.errors
import pytest
from image_helpers import build_from

from p2p.errors import ImageError
from sandbox.archive import (
    LayerEntry,
    file_sha256,
    inspect_archive,
    layer_tar,
    sha256_digest,
    write_clean_archive,
)
from sandbox.archive_layers import layer_diff_ids, store_layers, write_partial_archive
from sandbox.archive_writer import _blob, _canonical_json, _info
from sandbox.images import load_image_archive
from sandbox.layerstore import LayerStore

BASE = layer_tar([LayerEntry("base", "dir"), LayerEntry("base/big", "file", data=bytes(range(256)) * 4096)])


def _archive(*layers: bytes, compressed: frozenset[int] = frozenset(), extra: dict[str, bytes] | None = None,
             drop: frozenset[int] = frozenset()) -> bytes:
    """A docker-archive that is also an OCI layout, of one image with these layers (uncompressed tars);
    the ``compressed`` ones travel gzipped, the ``drop``ped ones are listed but absent."""
    diff_ids = [sha256_digest(layer) for layer in layers]
    blobs = [gzip.compress(layer, mtime=0) if i in compressed else layer for i, layer in enumerate(layers)]
    config = _canonical_json({"architecture": "amd64", "os": "linux", "config": {},
                              "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    manifest = _canonical_json({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if i in compressed else ""),
                    "digest": sha256_digest(b), "size": len(b)} for i, b in enumerate(blobs)]})
    index = _canonical_json({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256_digest(manifest),
        "size": len(manifest)}]})
    legacy = _canonical_json([{"Config": _blob(sha256_digest(config)), "RepoTags": None,
                               "Layers": [_blob(sha256_digest(b)) for b in blobs]}])
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index, "manifest.json": legacy,
             _blob(sha256_digest(config)): config, _blob(sha256_digest(manifest)): manifest, **(extra or {})}
    files.update({_blob(sha256_digest(b)): b for i, b in enumerate(blobs) if i not in drop})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in sorted(files.items()):
            tar.addfile(_info(name, size=len(data)), io.BytesIO(data))
    return out.getvalue()


def _own_layer(tag: str) -> bytes:
    return layer_tar([LayerEntry(f"own-{tag}", "file", data=uuid.uuid4().bytes * 64)])


def _store_with(tmp_path, *layers: bytes) -> LayerStore:
    store = LayerStore(tmp_path / "layers", 64 << 20)
    for layer in layers:
        assert store.add(sha256_digest(layer), io.BytesIO(layer), len(layer))
    return store


def _partial(archive: bytes, omit: frozenset[str]) -> tuple[bytes, tuple[str, ...]]:
    src, dst = io.BytesIO(archive), io.BytesIO()
    omitted = write_partial_archive(src, inspect_archive(src), omit, dst)
    return dst.getvalue(), omitted


def _rebuild(partial: bytes, store: LayerStore | None) -> bytes:
    src, dst = io.BytesIO(partial), io.BytesIO()
    write_clean_archive(src, inspect_archive(src, store=store), dst, store=store)
    return dst.getvalue()


def _clean(archive: bytes) -> bytes:
    src, dst = io.BytesIO(archive), io.BytesIO()
    write_clean_archive(src, inspect_archive(src), dst)
    return dst.getvalue()


def test_a_partial_archive_rebuilds_to_the_clean_archive(tmp_path):
    own = _own_layer("a")
    full = _archive(BASE, own)
    assert layer_diff_ids(io.BytesIO(full)) == (sha256_digest(BASE), sha256_digest(own))
    store = _store_with(tmp_path, BASE)
    partial, omitted = _partial(full, frozenset(store.held(layer_diff_ids(io.BytesIO(full)))))
    assert omitted == (sha256_digest(BASE),)
    assert len(partial) < len(own) + (16 << 10) < len(BASE)  # its own layer, and the metadata (tar records)
    assert _rebuild(partial, store) == _clean(full)


def test_a_compressed_layer_is_sent_whole(tmp_path):
    own = _own_layer("z")
    full = _archive(BASE, own, compressed=frozenset({0}))
    partial, omitted = _partial(full, frozenset({sha256_digest(BASE), sha256_digest(own)}))
    assert omitted == (sha256_digest(own),)
    assert len(partial) > len(gzip.compress(BASE))
    store = _store_with(tmp_path, BASE, own)
    assert _rebuild(partial, store) == _clean(full)
    # One that lacks the compressed layer is refused, even when the store holds its diff id.
    with pytest.raises(ImageError, match="lacks a compressed layer"):
        inspect_archive(io.BytesIO(_archive(BASE, own, compressed=frozenset({0}), drop=frozenset({0}))), store=store)


def test_a_partial_archive_naming_a_layer_the_store_lacks_is_refused(tmp_path):
    own = _own_layer("b")
    partial, _ = _partial(_archive(BASE, own), frozenset({sha256_digest(BASE)}))
    with pytest.raises(ImageError, match="lacks a layer of its image"):
        inspect_archive(io.BytesIO(partial), store=_store_with(tmp_path, own))
    with pytest.raises(ImageError, match="lacks a layer of its image"):
        inspect_archive(io.BytesIO(partial))  # no store: a partial archive is an incomplete one


def test_a_tampered_store_file_is_refused_at_rebuild(tmp_path):
    own = _own_layer("c")
    full = _archive(BASE, own)
    store = _store_with(tmp_path, BASE)
    partial, _ = _partial(full, frozenset({sha256_digest(BASE)}))
    plan = inspect_archive(io.BytesIO(partial), store=store)
    stored = store.path(sha256_digest(BASE))
    stored.write_bytes(stored.read_bytes().replace(b"base/big", b"base/bad"))  # same size, other bytes
    with pytest.raises(ImageError, match="layer store does not match its diff id") as refused:
        write_clean_archive(io.BytesIO(partial), plan, io.BytesIO(), store=store)
    assert refused.value.fields.get("reason") == "layer_mismatch"
    assert not store.has(sha256_digest(BASE))  # damaged: no longer held, nor advertised
    with pytest.raises(ImageError, match="needs the layer store"):
        write_clean_archive(io.BytesIO(partial), plan, io.BytesIO())


def test_a_partial_archive_with_an_extra_member_is_refused(tmp_path):
    own = _own_layer("d")
    store = _store_with(tmp_path, BASE)
    sneaky = _archive(BASE, own, drop=frozenset({0}), extra={"blobs/sha256/" + "e" * 64: b"x"})
    with pytest.raises(ImageError, match="not part of the agreed image"):
        inspect_archive(io.BytesIO(sneaky), store=store)
    honest = _archive(BASE, own, drop=frozenset({0}))
    assert inspect_archive(io.BytesIO(honest), store=store).absent == {_blob(sha256_digest(BASE)): sha256_digest(BASE)}


def test_store_layers_keeps_the_uncompressed_layers(tmp_path):
    own = _own_layer("e")
    full = _archive(BASE, own, compressed=frozenset({1}))
    store = LayerStore(tmp_path / "layers", 64 << 20)
    src = io.BytesIO(full)
    assert store_layers(src, inspect_archive(src), store) == (sha256_digest(BASE),)
    assert store.held([sha256_digest(BASE), sha256_digest(own)]) == (sha256_digest(BASE),)


# -- with the real engine: two images built from the demo image share its layer ------------------------


def _save(client, image_id: str, path) -> None:
    with path.open("wb") as out:
        for chunk in client.api.get_image(image_id):
            out.write(chunk)


def _gone(client, image_id: str) -> None:
    try:
        client.api.remove_image(image_id, force=True)
    except docker.errors.NotFound:
        pass


@pytest.mark.docker
def test_the_second_image_ships_only_its_own_layer(tmp_path, docker_client, demo_image):
    own_bytes = 64 << 10
    first = build_from(docker_client, tmp_path, demo_image, "first", uuid.uuid4().bytes * (own_bytes // 16))
    second = build_from(docker_client, tmp_path, demo_image, "second", uuid.uuid4().bytes * (own_bytes // 16))
    ids = [first, second]
    try:
        _save(docker_client, first, tmp_path / "first.tar")
        _save(docker_client, second, tmp_path / "second.tar")
        for image_id in ids:
            docker_client.api.remove_image(image_id)  # the demo image keeps the shared base layer
        store = LayerStore(tmp_path / "layers", 256 << 20)
        # The provider loads the first image whole, then keeps its layers.
        with (tmp_path / "first.tar").open("rb") as f:
            assert load_image_archive(docker_client, f, archive_sha256=file_sha256(f), image_id=first) == first
            held = store_layers(f, inspect_archive(f), store)
        # The buyer of the second asks which layers the provider holds and leaves those out.
        with (tmp_path / "second.tar").open("rb") as f:
            diff_ids = layer_diff_ids(f)
            assert len(diff_ids) == 2 and diff_ids[0] in held
            have = store.held(diff_ids)
            assert have == (diff_ids[0],)
            with (tmp_path / "partial.tar").open("w+b") as partial:
                assert write_partial_archive(f, inspect_archive(f), frozenset(have), partial) == have
            whole = (tmp_path / "second.tar").stat().st_size
        sent = (tmp_path / "partial.tar").stat().st_size
        assert sent < own_bytes + (32 << 10)  # its own layer and the metadata, about
        assert sent < whole - store.size(diff_ids[0]) + (16 << 10)  # the base layer did not travel
        # The provider rebuilds the clean archive from what arrived and its store, and loads it.
        with (tmp_path / "partial.tar").open("rb") as partial, (tmp_path / "clean.tar").open("w+b") as clean:
            plan = inspect_archive(partial, store=store)
            assert set(plan.absent.values()) == {diff_ids[0]}
            write_clean_archive(partial, plan, clean, store=store)
            clean.seek(0)
            loaded = load_image_archive(docker_client, clean, archive_sha256=file_sha256(clean), image_id=second)
            assert loaded == second
            assert store_layers(partial, plan, store) == diff_ids
    finally:
        for image_id in ids:
            _gone(docker_client, image_id)
