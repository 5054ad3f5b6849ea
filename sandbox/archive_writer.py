"""Deterministic image archives (pure): the bytes of a one-layer image that both image stores load.

The archive is both a legacy docker-archive (``manifest.json``) and an OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/...``); sandbox.archive explains why, and reads any archive back.

Rule 1: the same inputs give the same bytes, hence the same digests (every tar header has mtime 0,
uid/gid as given, empty user and group names; entries are sorted; JSON is compact with sorted keys).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NOBODY = 65534


@dataclass(frozen=True)
class LayerEntry:
    """One entry of a layer: a directory, a regular file or a symlink."""

    path: str
    kind: str  # "dir" | "file" | "symlink"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class ArchiveDigests:
    """What an archive claims, recomputed from its bytes (Rule 2)."""

    archive_sha256: str  # "sha256:<hex>" of the whole tar
    config_digest: str  # the image id under the classic store
    manifest_digest: str | None  # the image id under the containerd store (None: legacy-only archive)
    config: Mapping[str, object]

    def image_ids(self) -> frozenset[str]:
        return frozenset(d for d in (self.config_digest, self.manifest_digest) if d)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _tar(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, *, kind: str = "file", size: int = 0, mode: int = 0o644, uid: int = 0,
          gid: int = 0, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.size, info.mode, info.uid, info.gid, info.mtime = size, mode, uid, gid, 0
    info.uname = info.gname = ""
    info.linkname = target
    return info


def layer_tar(entries: Iterable[LayerEntry]) -> bytes:
    """One uncompressed layer; its sha256 is both the blob digest and the diff id."""
    members = []
    for e in sorted(entries, key=lambda e: e.path):
        name = e.path.strip("/") + ("/" if e.kind == "dir" else "")
        info = _info(name, kind=e.kind, size=len(e.data) if e.kind == "file" else 0, mode=e.mode,
                     uid=e.uid, gid=e.gid, target=e.target)
        members.append((info, e.data if e.kind == "file" else None))
    return _tar(members)


def image_archive(layer: bytes, config_fields: Mapping[str, object], *, architecture: str,
                  repo_tag: str | None = None) -> tuple[bytes, ArchiveDigests]:
    """A one-layer image as a docker-archive that is also an OCI layout, and its digests."""
    layer_digest = sha256_digest(layer)
    config = {
        "architecture": architecture, "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": dict(config_fields),
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "suanli sandbox.archive"}],
    }
    config_bytes = _canonical_json(config)
    config_digest = sha256_digest(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_bytes = _canonical_json(manifest)
    manifest_digest = sha256_digest(manifest_bytes)
    descriptor: dict[str, object] = {"mediaType": manifest["mediaType"], "digest": manifest_digest,
                                     "size": len(manifest_bytes)}
    if repo_tag:
        descriptor["annotations"] = {"io.containerd.image.name": f"docker.io/{repo_tag}",
                                     "org.opencontainers.image.ref.name": repo_tag.rsplit(":", 1)[-1]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [descriptor]}
    legacy = [{"Config": _blob(config_digest), "RepoTags": [repo_tag] if repo_tag else None,
               "Layers": [_blob(layer_digest)]}]
    files = {
        "oci-layout": _canonical_json({"imageLayoutVersion": "1.0.0"}),
        "index.json": _canonical_json(index),
        "manifest.json": _canonical_json(legacy),
        _blob(config_digest): config_bytes,
        _blob(manifest_digest): manifest_bytes,
        _blob(layer_digest): layer,
    }
    dirs = ["blobs/", "blobs/sha256/"]
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_info(d, kind="dir", mode=0o755), None) for d in dirs]
    members += [(_info(n, size=len(b)), b) for n, b in sorted(files.items())]
    data = _tar(members)
    return data, ArchiveDigests(sha256_digest(data), config_digest, manifest_digest, config)


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]
