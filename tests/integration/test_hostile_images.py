"""Hostile image archives against the real Docker engine (issue 13, C1).

Each archive is built from a real `docker save` of the demo image, rewritten with tarfile: the
buyer's image shares the demo's layer and differs in one config label, so every run's ids are new.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tracemalloc
import uuid

import docker
import docker.errors
import pytest
from cli_helpers import images_removed_after

from p2p.errors import ImageError
from sandbox.archive import LayerEntry, image_archive, layer_tar
from sandbox.images import load_image_archive

VICTIM = "suanli-test-victim"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def saved_demo(docker_client, demo_image) -> dict[str, bytes]:
    """The files of `docker save <demo id>` (the legacy layout Docker 20.10 writes)."""
    data = b"".join(docker_client.api.get_image(demo_image))
    return _files(data)


class Variant:
    """The demo image with one extra config label: a new image id, the demo's layer."""

    def __init__(self, saved: dict[str, bytes], *, blobs: bool = False) -> None:
        """``blobs``: name files as Docker 25+ does (blobs/sha256/<hex>), else as Docker 20.10 does."""
        entry = json.loads(saved["manifest.json"])[0]
        config = json.loads(saved[entry["Config"]])
        config.setdefault("config", {}).setdefault("Labels", {})["suanli.test"] = uuid.uuid4().hex
        self.config = _canonical(config)
        self.id = _sha(self.config)
        self.config_name = "blobs/sha256/" + self.id[7:] if blobs else self.id[7:] + ".json"
        layers = [saved[name] for name in entry["Layers"]]
        self.layers = ["blobs/sha256/" + _sha(d)[7:] for d in layers] if blobs else list(entry["Layers"])
        self.layer_files = dict(zip(self.layers, layers, strict=True))

    def legacy_entry(self, tags: list[str] | None) -> dict[str, object]:
        return {"Config": self.config_name, "RepoTags": tags, "Layers": self.layers}

    def files(self) -> dict[str, bytes]:
        return {self.config_name: self.config, **self.layer_files}

    def oci(self) -> tuple[dict[str, bytes], str]:
        """An OCI index.json + manifest blob describing this image; and the manifest digest."""
        manifest = _canonical({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.id,
                       "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _sha(data),
                        "size": len(data)} for data in self.layer_files.values()]})
        digest = _sha(manifest)
        index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                     "digest": digest, "size": len(manifest)}]}
        return {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": _canonical(index),
                "blobs/sha256/" + digest[7:]: manifest}, digest


def _present(client, ref: str) -> str | None:
    try:
        return client.api.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        return None


@pytest.fixture
def cleanup(docker_client):
    with images_removed_after(docker_client) as ids:
        yield ids


@pytest.fixture
def victim(docker_client, cleanup) -> str:
    """An operator's own tag, on an image of its own: `suanli-test-victim:<unique>`."""
    layer = layer_tar([LayerEntry("victim", "file", 0o644, data=uuid.uuid4().bytes)])
    data, digests = image_archive(layer, {"Labels": {"t": uuid.uuid4().hex}}, architecture="amd64")
    docker_client.api.load_image(data)
    cleanup.append(digests.config_digest)
    tag = uuid.uuid4().hex[:12]
    docker_client.api.tag(digests.config_digest, VICTIM, tag)
    return f"{VICTIM}:{tag}"


def _load(client, data: bytes, image_id: str) -> str:
    return load_image_archive(client, data, archive_sha256=_sha(data), image_id=image_id)


def test_archive_tags_never_reach_the_engine(docker_client, saved_demo, victim, cleanup):
    """manifest.json's RepoTags name the operator's tag: the tag must stay where it was."""
    before = _present(docker_client, victim)
    buyer = Variant(saved_demo)
    cleanup.append(buyer.id)
    data = _tar({"manifest.json": _canonical([buyer.legacy_entry([victim, "suanli-test-buyer:x"])]),
                 **buyer.files()})
    assert _load(docker_client, data, buyer.id) == buyer.id
    assert _present(docker_client, victim) == before != buyer.id
    assert docker_client.api.inspect_image(buyer.id)["RepoTags"] == []
    assert _present(docker_client, "suanli-test-buyer:x") is None


def test_archive_with_a_hidden_second_image_loads_nothing(docker_client, saved_demo, cleanup):
    """index.json names the agreed image; manifest.json also carries a hidden, tagged one."""
    buyer, hidden = Variant(saved_demo, blobs=True), Variant(saved_demo)
    cleanup += [buyer.id, hidden.id]
    oci, _ = buyer.oci()
    tag = f"suanli-test-hidden:{uuid.uuid4().hex[:12]}"
    data = _tar({**oci, "manifest.json": _canonical([buyer.legacy_entry(None), hidden.legacy_entry([tag])]),
                 **buyer.files(), **hidden.files()})
    with pytest.raises(ImageError):
        _load(docker_client, data, buyer.id)
    assert _present(docker_client, buyer.id) is None
    assert _present(docker_client, hidden.id) is None and _present(docker_client, tag) is None


def test_index_and_manifest_that_disagree_are_refused(docker_client, saved_demo, cleanup):
    """index.json describes the agreed image, manifest.json (what Docker 20.10 loads) another."""
    buyer, other = Variant(saved_demo, blobs=True), Variant(saved_demo)
    cleanup += [buyer.id, other.id]
    oci, _ = buyer.oci()
    data = _tar({**oci, "manifest.json": _canonical([other.legacy_entry(None)]),
                 **buyer.files(), **other.files()})
    with pytest.raises(ImageError):
        _load(docker_client, data, buyer.id)
    assert _present(docker_client, buyer.id) is None and _present(docker_client, other.id) is None


def test_extra_blob_beyond_the_agreed_image_is_refused(docker_client, saved_demo, cleanup):
    """A second image's config rides along unreferenced: refused before loading."""
    buyer, hidden = Variant(saved_demo), Variant(saved_demo)
    cleanup += [buyer.id, hidden.id]
    data = _tar({"manifest.json": _canonical([buyer.legacy_entry(None)]), **buyer.files(),
                 "blobs/sha256/" + hidden.id[7:]: hidden.config})
    with pytest.raises(ImageError, match="not part of the agreed image"):
        _load(docker_client, data, buyer.id)
    assert _present(docker_client, buyer.id) is None


def test_consistent_oci_and_legacy_archive_loads_untagged(docker_client, saved_demo, cleanup):
    buyer = Variant(saved_demo, blobs=True)
    cleanup.append(buyer.id)
    oci, manifest_digest = buyer.oci()
    data = _tar({**oci, "manifest.json": _canonical([buyer.legacy_entry(["suanli-test-buyer:y"])]),
                 **buyer.files(), "repositories": b'{"suanli-test-buyer":{"y":"x"}}'})
    assert _load(docker_client, data, buyer.id) == buyer.id
    assert docker_client.api.inspect_image(buyer.id)["RepoTags"] == []
    assert _present(docker_client, "suanli-test-buyer:y") is None


def test_a_plain_docker_save_reads_as_its_one_image(docker_client, demo_image):
    """What an honest buyer sends: `docker save` by tag (with `repositories`, `<id>/json`, `VERSION`)."""
    from sandbox.archive import read_digests
    from sandbox.images import DEMO_TAG

    data = b"".join(docker_client.api.get_image(DEMO_TAG))
    assert "repositories" in _files(data)
    assert demo_image in read_digests(data).image_ids()


def _huge_pax_header(nbytes: int) -> bytes:
    """One pax header whose data is ``nbytes`` long (a comment), as tar bytes."""
    prefix = b"%d comment=" % nbytes
    info = tarfile.TarInfo("pax")
    info.type, info.size = tarfile.XHDTYPE, nbytes
    body = prefix + b"x" * (nbytes - len(prefix) - 1) + b"\n"
    return info.tobuf(format=tarfile.USTAR_FORMAT) + body.ljust(-(-nbytes // 512) * 512, b"\0")


def test_a_compressed_layer_with_a_huge_header_is_refused_in_bounded_memory(docker_client, saved_demo, cleanup):
    """The demo's real layer, gzipped behind one 32 MiB pax header (review of issue 13): refused before
    any load, and the provider never holds the header (tarfile would read it whole)."""
    buyer = Variant(saved_demo)
    cleanup.append(buyer.id)
    layer_name = buyer.layers[0]
    buyer.layer_files[layer_name] = gzip.compress(_huge_pax_header(32 << 20) + buyer.layer_files[layer_name],
                                                  compresslevel=1, mtime=0)
    data = _tar({"manifest.json": _canonical([buyer.legacy_entry(None)]), **buyer.files()})
    assert len(data) < 4 << 20  # the demo layer (busybox) and a few KiB of header
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="metadata header"):
            _load(docker_client, data, buyer.id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert _present(docker_client, buyer.id) is None


def test_a_gzipped_docker_save_layer_is_read_and_loads(docker_client, saved_demo, cleanup):
    """The guarded walk reads what Docker reads: the demo's real layer, gzipped, loads as the agreed image."""
    buyer = Variant(saved_demo)
    cleanup.append(buyer.id)
    for name in buyer.layers:
        buyer.layer_files[name] = gzip.compress(buyer.layer_files[name], mtime=0)
    data = _tar({"manifest.json": _canonical([buyer.legacy_entry(None)]), **buyer.files()})
    assert _load(docker_client, data, buyer.id) == buyer.id
