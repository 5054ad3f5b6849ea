"""Image archives as bytes: read the digests of any one, check a buyer's, write it clean (pure).

An image travels between peers without a registry as a `docker save` archive. The archive this module
writes is both a legacy docker-archive (``manifest.json``) and an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/...``), so that either kind of image store can load it:
- the classic graphdriver store names the loaded image by its **config digest**, the containerd image
  store (default on fresh Docker 29+) by its **manifest digest**.

Rule 1: the same inputs give the same bytes, hence the same digests (every tar header has mtime 0,
uid/gid as given, empty user and group names; entries are sorted; JSON is compact with sorted keys); the
writer lives in sandbox.archive_writer, its names re-exported here.
Rule 2: an archive's digests are computed from its blobs, never trusted from its own claims.
Rule 3 (a buyer's archive, issue 13 C1): it holds exactly one image. ``manifest.json`` (what the
classic store loads) and ``index.json`` (what the containerd store loads) must describe the same one,
and every member must belong to it; anything else is refused before any load. What reaches
``docker load`` is a fresh tar (``write_clean_archive``) without a tag, an annotation, a
``repositories`` file or a member the image does not reference, so loading can tag nothing.
Rule 4 (issue 13 L5): for any input bytes, ``inspect_archive``/``read_digests`` return a value or
raise ImageError, nothing else; memory stays bounded whatever the archive's size (JSON members,
tar metadata headers and member counts have limits; blobs are streamed, never read whole).
Rule 5 (review of issue 13): tarfile never reads a buyer's tar. One guarded walk (``sandbox.tarwalk``) reads
the headers of the outer tar and of each layer (gzip, bzip2, xz decompressed as a stream), refuses any pax
or GNU long-name header over its MAX_HEADER_DATA_BYTES before reading it, and any header on which tar
readers could disagree about where the next header starts; the member map is built from what it yields.
Rule 6 (issue 19, layer-aware shipping): a *partial* archive lacks the contents of layers the provider's
store holds; ``inspect_archive(..., store=)`` allows an absent layer only when the store holds it, and
``write_clean_archive(..., store=)`` copies it from there, hashed as it goes (sandbox.archive_layers).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from p2p.errors import ENVIRONMENT
from sandbox.archive_writer import (  # the writer's names, re-exported for callers of sandbox.archive
    NOBODY,
    ArchiveDigests,
    LayerEntry,
    _blob,
    _canonical_json,
    _info,
    image_archive,
    layer_tar,
    sha256_digest,
)
from sandbox.errors import ImageError
from sandbox.tarwalk import Blocks, Member, Section, decompress, walk_tar

if TYPE_CHECKING:
    from sandbox.archive_layers import LayerSource

__all__ = ["NOBODY", "ArchiveDigests", "ImagePlan", "LayerEntry", "file_sha256", "image_archive", "inspect_archive",
           "layer_tar", "read_digests", "sha256_digest", "write_clean_archive"]

MAX_MEMBERS = 4096  # tar members of an image archive, directories included
MAX_LAYERS = 256  # Docker itself stops at 127 on overlay
MAX_JSON_BYTES = 4 << 20  # manifest.json, index.json, an OCI manifest, an image config
MAX_UNPACKED_BYTES = 8 << 30  # the image's files once unpacked (gzip/bzip2/xz layers are expanded)
MAX_LAYER_ENTRIES = 1_000_000  # entries of one layer
_COPY_BYTES = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_METADATA = frozenset({"manifest.json", "index.json", "oci-layout", "repositories"})  # rewritten or dropped
_MANIFEST_TYPES = frozenset({"application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json"})
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# What tarfile, json and the checks below may raise on hostile bytes; translated once (Rule 4).
_PARSE_ERRORS = (tarfile.TarError, ValueError, KeyError, TypeError, IndexError, AttributeError,
                 OverflowError, EOFError, RecursionError, MemoryError, UnicodeError, OSError, zlib.error,
                 lzma.LZMAError)


@dataclass(frozen=True)
class ImagePlan:
    """The one image an archive holds, as the members a clean copy of it consists of (Rule 3)."""

    digests: ArchiveDigests
    config_name: str  # names in the clean archive: blobs/sha256/<hex> whenever index.json is present
    layer_names: tuple[str, ...]  # in the config's order; a shared blob may repeat
    manifest_name: str | None  # the OCI manifest blob (None: legacy-only archive)
    manifest_media_type: str
    manifest_size: int
    sources: Mapping[str, str]  # clean archive name -> the member of the buyer's archive it is copied from
    expected: Mapping[str, str]  # clean archive name -> the sha256 its bytes must have (Rule 2)
    diff_ids: tuple[str, ...] = ()  # the config's rootfs.diff_ids, one per entry of layer_names
    absent: Mapping[str, str] = field(default_factory=dict)  # clean layer name -> diff id, from the store (Rule 6)

    def layers(self) -> tuple[tuple[str, str], ...]:
        """(clean name, diff id) of each distinct layer, in the config's order."""
        return tuple(dict.fromkeys(zip(self.layer_names, self.diff_ids, strict=True)))

    def omittable(self, name: str, diff_id: str) -> bool:
        """Whether this layer may travel by its diff id alone (Rule 6): its bytes must be its diff id."""
        return self.expected.get(name, diff_id) == diff_id


def read_digests(data: bytes) -> ArchiveDigests:
    """Recompute the digests of a `docker save` or OCI archive; raise ImageError if it is not one
    (or holds anything but one image, Rule 3)."""
    return inspect_archive(io.BytesIO(data)).digests


def file_sha256(f: IO[bytes]) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(_COPY_BYTES):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def inspect_archive(f: IO[bytes], *, archive_sha256: str | None = None,
                    max_unpacked_bytes: int = MAX_UNPACKED_BYTES, store: LayerSource | None = None) -> ImagePlan:
    """Read an archive (a seekable file) without trusting it: its one image, or ImageError.

    ``archive_sha256``: the sha256 the caller already computed of these bytes (as they arrived);
    recomputed here when absent. ``max_unpacked_bytes``: what the image's layers may hold once
    unpacked on the engine's disk (a compressed layer is expanded to count; a sparse file, which
    the engine would write out in full, is refused). ``store``: a partial archive's missing layers
    are allowed when it holds them (Rule 6); the plan's ``absent`` names them.
    """
    try:
        sha = archive_sha256 or file_sha256(f)
        files = _members(f)
        plan = _plan(f, files, sha, store)
        unpacked = 0
        for source in set(plan.sources[n] for n in plan.layer_names if n not in plan.absent):
            unpacked += _unpacked_size(f, files[source], max_unpacked_bytes - unpacked)
        for diff_id in set(plan.absent.values()):
            assert store is not None  # absent is empty without one
            unpacked += store.size(diff_id)  # an uncompressed tar: at least what it unpacks to
            if unpacked > max_unpacked_bytes:
                raise _refuse("the image would take too much disk once unpacked", limit=MAX_UNPACKED_BYTES)
        return plan
    except ImageError:
        raise
    except _PARSE_ERRORS as exc:
        raise ImageError(f"not a readable image archive: {type(exc).__name__}: {exc}"[:300]) from exc


def _unpacked_size(f: IO[bytes], member: Member, allowed: int) -> int:
    """The bytes one layer writes when unpacked, read as a stream through the guarded walk (bounded
    memory, Rule 5); ImageError past ``allowed``, for a sparse file, or for too many entries."""
    total = 0
    blocks = Blocks(decompress(Section(f, member)), None)
    for info in walk_tar(blocks, MAX_LAYER_ENTRIES, "a layer has too many entries"):
        total += info.size  # every entry with data; a link, directory or device has none (checked)
        if total > allowed:
            raise _refuse("the image would take too much disk once unpacked", limit=MAX_UNPACKED_BYTES)
    return total


def _refuse(message: str, **fields: object) -> ImageError:
    return ImageError(message, **fields)


def _members(f: IO[bytes]) -> dict[str, Member]:
    """Regular files by normalised name; refuses links, devices, duplicates and odd names."""
    f.seek(0, io.SEEK_END)
    files: dict[str, Member] = {}
    for info in walk_tar(Blocks(f, f.tell()), MAX_MEMBERS, "the image archive has too many members"):
        name = _strip_dot(info.name)
        name = name.rstrip("/") if info.isdir() else name
        if not name or name == ".":
            continue
        if name.startswith("/") or posixpath.normpath(name) != name or name.startswith(".."):
            raise _refuse("the image archive has a member with an unsafe name", actual=name[:200])
        if info.isdir():
            continue
        if not info.isreg():
            raise _refuse("the image archive has a link or special file", actual=name[:200])
        if name in files:
            raise _refuse("the image archive has a member twice", actual=name[:200])
        files[name] = info
    return files


def _read_json(f: IO[bytes], files: Mapping[str, Member], name: str,
               what: str) -> tuple[object, bytes]:
    info = files.get(name)
    if info is None:
        raise _refuse(f"the archive's {what} is missing", actual=name[:200])
    if info.size > MAX_JSON_BYTES:
        raise _refuse(f"the archive's {what} is too large", limit=MAX_JSON_BYTES, actual=info.size)
    data = Section(f, info).read()
    try:
        return json.loads(data), data
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise _refuse(f"the archive's {what} is not valid JSON", actual=name[:200]) from exc


def _digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise _refuse(f"{what} is not a sha256 digest", actual=repr(value)[:100])
    return value


def _one(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
        raise _refuse(f"an image archive must hold exactly one image ({what})", expected=1,
                      actual=len(value) if isinstance(value, list) else type(value).__name__)
    return value[0]


def _layer_list(value: object, what: str) -> list[object]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LAYERS:
        raise _refuse(f"the {what} must list 1 to {MAX_LAYERS} layers", actual=repr(value)[:100])
    return value


def _plan(f: IO[bytes], files: dict[str, Member], sha: str, store: LayerSource | None = None) -> ImagePlan:
    expected: dict[str, str] = {}
    config_name = manifest_name = None
    layer_names: list[str] = []
    manifest_digest, media_type, manifest_size = None, _OCI_MANIFEST, 0
    oci_config: str | None = None
    oci_layers: list[str] = []
    if "index.json" in files:
        index, _ = _read_json(f, files, "index.json", "index.json")
        descriptor = _one(index.get("manifests") if isinstance(index, dict) else None, "index.json")
        manifest_digest = _digest(descriptor.get("digest"), "index.json's manifest digest")
        manifest_name = _blob(manifest_digest)
        manifest, manifest_bytes = _read_json(f, files, manifest_name, "image manifest")
        if sha256_digest(manifest_bytes) != manifest_digest:
            raise _refuse("the archive's manifest blob does not match its digest", expected=manifest_digest)
        if not isinstance(manifest, dict) or "manifests" in manifest:
            raise _refuse("index.json must name one image manifest, not an index (save one platform)")
        media_type = manifest.get("mediaType", descriptor.get("mediaType", _OCI_MANIFEST))
        if media_type not in _MANIFEST_TYPES:
            raise _refuse("the archive's manifest has an unknown media type", actual=repr(media_type)[:100])
        manifest_size = len(manifest_bytes)
        config_desc = manifest.get("config")
        oci_config = _digest(config_desc.get("digest") if isinstance(config_desc, dict) else None,
                             "the manifest's config digest")
        for layer in _layer_list(manifest.get("layers"), "image manifest"):
            oci_layers.append(_digest(layer.get("digest") if isinstance(layer, dict) else None,
                                      "a manifest layer digest"))
        config_name, layer_names = _blob(oci_config), [_blob(d) for d in oci_layers]
    if "manifest.json" in files:
        legacy, _ = _read_json(f, files, "manifest.json", "manifest.json")
        entry = _one(legacy, "manifest.json")
        legacy_config, legacy_layers = entry.get("Config"), _layer_list(entry.get("Layers"), "manifest.json")
        if not isinstance(legacy_config, str) or not all(isinstance(n, str) for n in legacy_layers):
            raise _refuse("manifest.json's Config and Layers must be file names")
        if oci_layers and len(legacy_layers) != len(oci_layers):
            raise _refuse("manifest.json and index.json describe different images (layer count)",
                          expected=len(oci_layers), actual=len(legacy_layers))
        config_name, layer_names = _strip_dot(legacy_config), [_strip_dot(str(n)) for n in legacy_layers]
    if config_name is None:
        raise _refuse("not an image archive: neither manifest.json nor index.json found")
    config, config_bytes = _read_json(f, files, config_name, "image config")
    config_digest = sha256_digest(config_bytes)
    if oci_config is not None and config_digest != oci_config:
        raise _refuse("manifest.json and index.json describe different images (config)",
                      expected=oci_config, actual=config_digest)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(config, dict) or not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
        raise _refuse("the image config does not list one diff id per layer", actual=len(layer_names))
    diff_ids = [_digest(d, "a diff id of the image config") for d in diff_ids]
    missing: dict[int, str] = {}  # index in layer_names -> diff id, of the layers a partial archive lacks
    for i, name in enumerate(layer_names):
        if name not in files:
            if store is None or not store.has(diff_ids[i]):
                raise _refuse("the archive lacks a layer of its image", actual=name[:200])
            missing[i] = diff_ids[i]
    keep = {config_name, *layer_names} | ({manifest_name} if manifest_name else set())
    legacy_meta = {posixpath.dirname(n) + suffix for n in layer_names if n.endswith("/layer.tar")
                   for suffix in ("/json", "/VERSION")}
    for name in files:
        if name not in keep and name not in _METADATA and name not in legacy_meta:
            raise _refuse("the archive holds a file that is not part of the agreed image", actual=name[:200])
    # The clean archive: OCI blob names when there is an index (both stores can load it), else the
    # legacy names; a blob named by a digest must hash to it (Rule 2).
    sources: dict[str, str] = {}
    if manifest_name is not None:
        sources[manifest_name] = manifest_name
        sources[_blob(config_digest)] = config_name
        clean_layers = [_blob(d) for d in oci_layers]
        for clean, source in zip(clean_layers, layer_names, strict=True):
            if sources.setdefault(clean, source) != source:
                raise _refuse("one layer digest names two different members", actual=source[:200])
        expected.update({n: "sha256:" + n.rsplit("/", 1)[1] for n in sources})
        config_name, layer_names = _blob(config_digest), clean_layers
    else:
        sources = {n: n for n in (config_name, *layer_names)}
        expected.update({n: "sha256:" + n.rsplit("/", 1)[1] for n in sources
                         if n.startswith("blobs/sha256/") and _DIGEST.fullmatch("sha256:" + n[13:])})
    absent: dict[str, str] = {}
    for i, diff_id in missing.items():
        name = layer_names[i]
        if expected.get(name, diff_id) != diff_id:  # a compressed blob cannot come from the store (Rule 6)
            raise _refuse("the archive lacks a compressed layer of its image", actual=name[:200])
        if absent.setdefault(name, diff_id) != diff_id:
            raise _refuse("one absent layer is named for two diff ids", actual=name[:200])
    for name in layer_names:
        if name not in absent and sources[name] not in files:  # one blob named twice, present once
            raise _refuse("the archive lacks a layer of its image", actual=name[:200])
    return ImagePlan(ArchiveDigests(sha, config_digest, manifest_digest, config), config_name,
                     tuple(layer_names), manifest_name, str(media_type), manifest_size, sources, expected,
                     tuple(diff_ids), absent)


class _HashingReader:
    def __init__(self, f: Section | IO[bytes]) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.digest.update(data)
        return data


def write_clean_archive(src: IO[bytes], plan: ImagePlan, dst: IO[bytes], *,
                        store: LayerSource | None = None) -> None:
    """Copy the plan's image from ``src`` into ``dst`` as a fresh, untagged archive (Rule 3), streaming;
    the layers a partial archive lacks (``plan.absent``) come from ``store`` (Rule 6).

    ImageError if a member or a stored layer does not hash to what the plan expects (``dst`` is then
    unusable; a damaged stored layer is discarded from the store), or if a layer is absent and the store
    no longer holds it.
    """
    if plan.absent and store is None:
        raise _refuse("a partial image archive needs the layer store to be rebuilt", reason="layer_missing",
                      fault=ENVIRONMENT)
    _write_archive(src, plan, dst, frozenset(), store)


def _write_archive(src: IO[bytes], plan: ImagePlan, dst: IO[bytes], omit: frozenset[str],
                   store: LayerSource | None) -> None:
    """The clean archive (Rule 3): ``omit`` names layers left out (Rule 6, the buyer), ``plan.absent`` those
    copied from ``store`` (Rule 6, the provider); every member is hashed as it is copied (Rule 2)."""
    legacy = [{"Config": plan.config_name, "RepoTags": None, "Layers": list(plan.layer_names)}]
    meta: list[tuple[str, bytes]] = [("manifest.json", _canonical_json(legacy))]
    if plan.manifest_name is not None:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [{"mediaType": plan.manifest_media_type, "digest": plan.digests.manifest_digest,
                                "size": plan.manifest_size}]}
        meta += [("oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"})),
                 ("index.json", _canonical_json(index))]
    copied = [n for n in plan.sources if n not in omit]
    dirs = sorted({d for n in copied for d in _parents(n)})
    try:
        src.seek(0)
        members = _members(src)
        with tarfile.open(fileobj=dst, mode="w", format=tarfile.PAX_FORMAT) as tar_out:
            for d in dirs:
                tar_out.addfile(_info(d + "/", kind="dir", mode=0o755))
            for name, data in meta:
                tar_out.addfile(_info(name, size=len(data)), io.BytesIO(data))
            for name in copied:
                if name in plan.absent:
                    assert store is not None  # write_clean_archive checked
                    _copy_stored(tar_out, name, plan.absent[name], store)
                    continue
                member = members[plan.sources[name]]
                reader = _HashingReader(Section(src, member))
                tar_out.addfile(_info(name, size=member.size), reader)
                actual = "sha256:" + reader.digest.hexdigest()
                if name in plan.expected and plan.expected[name] != actual:
                    raise _refuse("an archive member does not match its digest", expected=plan.expected[name],
                                  actual=actual)
    except ImageError:
        raise
    except _PARSE_ERRORS as exc:
        raise ImageError(f"the image archive could not be copied: {type(exc).__name__}: {exc}"[:300]) from exc


def _copy_stored(tar_out: tarfile.TarFile, name: str, diff_id: str, store: LayerSource) -> None:
    """One absent layer from the store, hashed as it is copied: its sha256 must be its diff id (Rule 6;
    the store is not trusted, sandbox.layerstore Rule 2). A damaged layer leaves the store."""
    with store.open(diff_id) as layer:
        size = os.fstat(layer.fileno()).st_size
        reader = _HashingReader(layer)
        tar_out.addfile(_info(name, size=size), reader)
    actual = "sha256:" + reader.digest.hexdigest()
    if actual != diff_id:
        store.discard(diff_id)
        raise _refuse("a layer from the layer store does not match its diff id", expected=diff_id, actual=actual,
                      reason="layer_mismatch", fault=ENVIRONMENT)


def _strip_dot(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
