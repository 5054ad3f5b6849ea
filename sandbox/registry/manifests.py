"""Manifests, indexes and platforms (pure; sandbox.registry Rules 3-4)."""

from __future__ import annotations

import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2p.errors import ENVIRONMENT
from sandbox.errors import ImageError
from sandbox.registry.refs import (
    _ARCHES,
    _DEFAULT_VARIANT,
    _DIGEST,
    _INDEXES,
    _MANIFESTS,
    MAX_LAYERS,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageRef,
    Platform,
    _show,
)

# -- manifests and platforms (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedImage:
    """What resolve found: the platform manifest to pull and what it states."""

    ref: ImageRef
    manifest_digest: str      # the platform manifest that will be pulled (== ref.digest unless ref is an index)
    config_digest: str        # the image id the engine will report after the pull
    total_bytes: int          # config + layers, as the manifest states (what a pull downloads)
    layers: tuple[tuple[str, int], ...]   # (digest, size)
    platform: str | None      # "linux/amd64" when chosen from an index, else None


@dataclass(frozen=True)
class IndexEntry:
    digest: str
    size: int
    os: str
    architecture: str
    variant: str | None

    @property
    def platform(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class ImageManifest:
    config: tuple[str, int]
    layers: tuple[tuple[str, int], ...]

    @property
    def total_bytes(self) -> int:
        return self.config[1] + sum(size for _, size in self.layers)


@dataclass(frozen=True)
class ImageIndex:
    entries: tuple[IndexEntry, ...]


def _format(what: str, why: str) -> ImageError:
    return ImageError(f"{what}: {why}", reason="image_format")


def _descriptor(value: Any, what: str) -> tuple[str, int]:
    if not isinstance(value, Mapping):
        raise _format(what, "a descriptor is not an object")
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise _format(what, "a descriptor's digest is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _format(what, "a descriptor's size is not a non-negative integer")
    return digest, size


def parse_manifest(body: bytes, content_type: str = "", what: str = "manifest") -> ImageManifest | ImageIndex:
    """A manifest's bytes → ImageManifest (docker schema 2 / OCI) or ImageIndex (manifest list / OCI
    index), or ImageError(reason="image_format"). The media type comes from the body, else the header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _format(what, "not JSON") from None
    if not isinstance(doc, dict):
        raise _format(what, "not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise _format(what, f"schema version {_show(str(doc.get('schemaVersion')))} is not supported (only 2)")
    media = doc.get("mediaType") or content_type.split(";", 1)[0].strip()
    if media not in _MANIFESTS and media not in _INDEXES:
        media = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "config" in doc else str(media)
    if media in _INDEXES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _format(what, "an index without a manifests list")
        parsed = []
        for entry in entries[:MAX_LAYERS]:
            digest, size = _descriptor(entry, what)
            plat = entry.get("platform") if isinstance(entry.get("platform"), Mapping) else {}
            variant = plat.get("variant")
            parsed.append(IndexEntry(digest=digest, size=size, os=str(plat.get("os") or ""),
                                     architecture=str(plat.get("architecture") or ""),
                                     variant=str(variant) if variant else None))
        return ImageIndex(entries=tuple(parsed))
    if media in _MANIFESTS:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise _format(what, "a manifest without a layers list")
        if len(layers) > MAX_LAYERS:
            raise _format(what, f"{len(layers)} layers, more than {MAX_LAYERS}")
        return ImageManifest(config=_descriptor(doc.get("config"), what),
                             layers=tuple(_descriptor(layer, what) for layer in layers))
    raise _format(what, f"media type {_show(str(media))} is not an image manifest or index")


def local_platform() -> Platform:
    """This machine's platform as an index names it: ("linux", "amd64", None), ("linux", "arm", "v7")."""
    machine = _platform.machine().lower()
    arch, variant = _ARCHES.get(machine, (machine, None))
    return "linux", arch, variant


def platform_text(plat: Platform) -> str:
    return "/".join(p for p in plat if p)


def choose_platform(index: ImageIndex, plat: Platform) -> IndexEntry:
    """The index entry for `plat` (os, architecture, variant), or ImageError(reason="image_platform")
    naming the platforms the index has. An entry without a variant is preferred when none is asked;
    arm64's "v8" and arm's "v7" count as their defaults. Attestation entries (unknown/unknown) are
    not platforms."""
    want_os, want_arch, want_variant = plat

    def variant(arch: str, value: str | None) -> str | None:
        return value or _DEFAULT_VARIANT.get(arch)

    fits = [e for e in index.entries if e.os == want_os and e.architecture == want_arch
            and (want_variant is None or variant(e.architecture, e.variant) == variant(want_arch, want_variant))]
    if fits:
        return sorted(fits, key=lambda e: variant(e.architecture, e.variant) != variant(want_arch, None))[0]
    have = sorted({e.platform for e in index.entries if e.os and e.os != "unknown"})
    raise ImageError(f"the image index has no manifest for {platform_text(plat)} (it has "
                     f"{', '.join(have) or 'no platforms'})", reason="image_platform", fault=ENVIRONMENT,
                     expected=platform_text(plat), actual=have)


def format_bytes(n: int) -> str:
    """Decimal units, as the docker CLI shows sizes: "5.3 GB", "120 MB"."""
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    if n >= 10**6:
        return f"{n / 10**6:.0f} MB"
    return f"{n / 10**3:.0f} kB"


def size_refusal(total_bytes: int, max_image_bytes: int) -> str | None:
    """Why an image of `total_bytes` is too large under the policy (Rule 4), or None."""
    if total_bytes <= max_image_bytes:
        return None
    return (f"the image is {format_bytes(total_bytes)}, this provider takes at most "
            f"{format_bytes(max_image_bytes)}")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """A WWW-Authenticate header → (scheme lower case, parameters): 'Bearer realm="...",service="..."'."""
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): value for key, value in
              re.findall(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*"((?:[^"\\]|\\.)*)"', rest)}
    for key, value in re.findall(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*([^",\s]+)', rest):
        params.setdefault(key.lower(), value)
    return scheme.lower(), params
