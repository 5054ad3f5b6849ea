"""Images from registries, pinned by digest: parse the reference, apply the provider's policy, read the
manifest (registry HTTP API v2), and have the engine pull exactly that manifest.

Blocking code: callers run it in a worker thread. The pure parts (parse_ref, registry_refusal,
choose_platform, parse_manifest, the size check, parse_challenge) touch no network.

Rule 1: a registry image is named by its manifest digest, REGISTRY/REPO@sha256:<64 hex>; a tag alone,
or a tag beside a digest, is refused: a tag can change under you, and the engine would ignore it.
Rule 2: a buyer names the registry, so the provider would connect wherever a buyer says. With no
allowed list, any registry is taken EXCEPT loopback, private (RFC 1918, CGNAT 100.64/10, 198.18/15,
IPv6 ULA), link-local, unspecified and other non-global addresses, and host names that resolve to
them; those only when the operator lists them. With an allowed list, only the registries it names.
A token realm or a redirect may go to the registry's own host or to a public address, never elsewhere.
Rule 3: every manifest body's sha256 must equal the digest it was asked by (image_mismatch). An index
leads to one platform manifest (two levels at most); an index inside an index is refused.
Rule 4: the image's size (config + layers, compressed, as the manifest states them) is checked against
the policy before any layer is requested: resolve reads manifests only, pull comes after it.
Rule 5: every wait is bounded: each HTTP request by policy.timeout_s (connect, each read, the whole
body), bodies by 4 MiB (a token by 64 KiB), redirects by 2 per request, DNS by the same timeout; a pull
by its overall timeout_s and by a stall of STALL_TIMEOUT_S without a message from the engine.
Rule 6: HTTPS, except plain HTTP to loopback hosts (127.0.0.0/8, ::1, localhost), as the engine does.
Only anonymous access: no credential of the provider is ever sent to a registry a buyer named
(anonymous Bearer tokens are fetched when the registry asks for one).
Rule 7: after a pull the engine must report REGISTRY/REPO@<manifest digest> among the image's
RepoDigests and its Id must equal the config digest; otherwise image_mismatch, and the pulled image is
removed if it was not on the engine before.
Rule 8: every refusal is an ImageError with one line and a ``reason=``: image_tag, image_ref,
registry_not_allowed, registry_unreachable, image_not_found, image_mismatch, image_platform,
image_format, image_too_large, pull_failed. Policy refusals and the network are ``fault=ENVIRONMENT``;
a malformed reference, a missing image or content that does not match its digest are the buyer's.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import platform as _platform
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from p2p.errors import ENVIRONMENT
from sandbox.engine import FOREIGN
from sandbox.errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_NAME_CHARS = 255
MAX_MANIFEST_BYTES = 4 << 20
MAX_TOKEN_BYTES = 64 << 10
MAX_REDIRECTS = 2
MAX_LAYERS = 1000
STALL_TIMEOUT_S = 300.0
PROGRESS_EVERY_S = 1.0

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX))
_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
_INDEXES = frozenset({DOCKER_LIST, OCI_INDEX})

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(_COMPONENT + r"(?:/" + _COMPONENT + r")*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(_LABEL + r"(?:\." + _LABEL + r")*(?::[0-9]{1,5})?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_ARCHES = {"x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", None),
           "arm64": ("arm64", None), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i386": ("386", None),
           "i686": ("386", None), "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
           "riscv64": ("riscv64", None)}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}

Platform = tuple[str, str, str | None]


# -- references (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """A registry image pinned by its digest (Rule 1). ``registry`` is a host[:port], lower case, with
    Docker Hub's names folded into "docker.io" (and its one-component repositories under "library/")."""

    registry: str
    repository: str
    digest: str

    def __str__(self) -> str:
        """The canonical form, REGISTRY/REPOSITORY@DIGEST (Docker Hub: docker.io/library/x@...)."""
        return f"{self.name}@{self.digest}"

    @property
    def name(self) -> str:
        """REGISTRY/REPOSITORY, the repository argument of a pull."""
        return f"{self.registry}/{self.repository}"

    @property
    def repo_digest(self) -> str:
        """The reference as the engine lists it in RepoDigests: the canonical form, except Docker
        Hub's short one ("ubuntu@sha256:...", "user/app@sha256:...")."""
        if self.registry == DOCKER_HUB:
            short = self.repository.removeprefix("library/")
            return f"{short}@{self.digest}"
        return str(self)

    @property
    def api_host(self) -> str:
        """The host[:port] that serves its registry API (Docker Hub: registry-1.docker.io)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry


def _show(text: str, limit: int = 100) -> str:
    """`text` made safe for a one-line message: printable, bounded."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def is_registry_ref(text: str) -> bool:
    """True for a registry reference (it has an "@"); a pinned local id "sha256:..." is not one."""
    return "@" in text


def normalize_registry(host: str) -> str:
    """A registry host[:port] as compared everywhere: lower case, Docker Hub's names as "docker.io"."""
    host = host.strip().lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _ref_error(text: str, why: str, reason: str) -> ImageError:
    return ImageError(f"--image {_show(text)}: {why}", reason=reason, actual=_show(text))


def parse_ref(text: str) -> ImageRef:
    """REGISTRY/REPO@sha256:<64 hex> → ImageRef, or ImageError (reason image_tag or image_ref)."""
    pin = "pin a registry image by digest, REGISTRY/REPO@sha256:<64 hex> (a tag can change under you)"
    if "@" not in text:
        raise _ref_error(text, pin, "image_tag")
    name, _, digest = text.partition("@")
    if not _DIGEST.fullmatch(digest):
        raise _ref_error(text, "the digest must be sha256:<64 lowercase hex> (" + pin + ")", "image_ref")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        tag = last.split(":", 1)[1]
        if _TAG.fullmatch(tag):
            raise _ref_error(text, "give the digest without a tag, REGISTRY/REPO@sha256:... (the engine "
                             "would ignore the tag, and the digest alone says which bytes run)", "image_tag")
        raise _ref_error(text, "not a valid image name", "image_ref")
    if len(name) > MAX_NAME_CHARS:
        raise _ref_error(text, f"the image name is longer than {MAX_NAME_CHARS} characters", "image_ref")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
        if not _DOMAIN.fullmatch(registry):
            raise _ref_error(text, f"{_show(registry)} is not a valid registry host[:port]", "image_ref")
        port = registry.rpartition(":")[2] if ":" in registry else ""
        if port and not 0 < int(port) < 65536:
            raise _ref_error(text, f"{_show(registry)} has no valid port", "image_ref")
    else:
        registry, repository = DOCKER_HUB, name
    registry = normalize_registry(registry)
    if repository != repository.lower() and _REPOSITORY.fullmatch(repository.lower()):
        raise _ref_error(text, "repository names must be lower case", "image_ref")
    if not _REPOSITORY.fullmatch(repository):
        raise _ref_error(text, "not a valid repository name (lower-case letters, digits and . _ - "
                         "between them, components separated by /)", "image_ref")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    return ImageRef(registry=registry, repository=repository, digest=digest)


# -- which registries (Rule 2; pure core) -------------------------------------------------------------


@dataclass(frozen=True)
class RegistryPolicy:
    """The provider's rules for registry images."""

    allowed: tuple[str, ...] = ()        # registry hosts "host[:port]"; empty = any PUBLIC registry
    max_image_bytes: int = 20 << 30      # config + layers as the manifest states them (compressed)
    timeout_s: float = 15.0              # each HTTP request


def split_host(registry: str) -> tuple[str, int | None]:
    """"host[:port]" → (host, port or None)."""
    if registry.startswith("["):  # [v6]:port, for an operator's allowed list
        host, _, port = registry[1:].partition("]")
        return host, int(port[1:]) if port.startswith(":") and port[1:].isdigit() else None
    host, colon, port = registry.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host, int(port)
    return registry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_refusal(address: str) -> str | None:
    """Why a provider must not connect to this address on a buyer's word, or None if it is public."""
    ip = _ip(address)
    if ip is None:
        return "not an IP address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if not ip.is_global:  # RFC 1918, CGNAT 100.64/10, 198.18/15, ULA, documentation, reserved
        return "a private address"
    return None


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (spoken to over plain HTTP, Rule 6)."""
    if host.lower() == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def registry_refusal(registry: str, allowed: Sequence[str], addresses: Sequence[str]) -> str | None:
    """Why `registry` may not be used under `allowed`, given the addresses its host resolves to
    (pure; Rule 2), or None. `addresses` matters only when `allowed` is empty."""
    registry = normalize_registry(registry)
    listed = tuple(normalize_registry(entry) for entry in allowed)
    if listed:
        if registry in listed:
            return None
        return f"registry {registry} is not one this provider pulls from ({', '.join(listed)})"
    host, _ = split_host(registry)
    if host.lower() == "localhost":
        return f"registry {registry} is on this machine (loopback); the operator must list it to allow it"
    for address in addresses:
        why = address_refusal(address)
        if why is not None:
            where = f"is {why}" if _ip(host) is not None else f"resolves to {address}, {why}"
            return (f"registry {registry} {where}; a provider pulls only from public registries unless "
                    "its operator lists others")
    return None


def _resolve_host(host: str, timeout_s: float) -> list[str]:
    """The addresses `host` resolves to, within `timeout_s` (getaddrinfo has no timeout of its own)."""
    literal = _ip(host)
    if literal is not None:
        return [str(literal)]
    found: dict[str, Any] = {}

    def work() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            found["error"] = exc

    worker = threading.Thread(target=work, name="suanli-registry-dns", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if "infos" not in found:
        why = found.get("error") or f"no answer within {timeout_s:g} s"
        raise ImageError(f"registry host {_show(host)} cannot be resolved: {why}", reason="registry_unreachable",
                         fault=ENVIRONMENT)
    return sorted({str(info[4][0]) for info in found["infos"]})


def check_allowed(ref: ImageRef, policy: RegistryPolicy) -> None:
    """ImageError(reason="registry_not_allowed") unless the policy lets this provider pull from the
    reference's registry (Rule 2); resolves the host when no allowed list is set."""
    addresses: list[str] = []
    if not policy.allowed:
        addresses = _resolve_host(split_host(ref.api_host)[0], policy.timeout_s)
    why = registry_refusal(ref.registry, policy.allowed, addresses)
    if why is not None:
        raise ImageError(f"{ref}: {why}", reason="registry_not_allowed", fault=ENVIRONMENT,
                         actual=ref.registry)


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


# -- the registry API (I/O) -----------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand, each target checked (Rules 2 and 5)."""

    def redirect_request(self, req: Any, fp: Any, code: Any, msg: Any, headers: Any, newurl: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


class _Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class _RegistryApi:
    """Anonymous access to one registry's v2 API for one repository (Rules 5 and 6)."""

    def __init__(self, ref: ImageRef, policy: RegistryPolicy) -> None:
        self.ref = ref
        self.policy = policy
        host = ref.api_host
        self.base = f"{'http' if is_loopback_host(split_host(host)[0]) else 'https'}://{host}"
        self.token: str | None = None

    def _unreachable(self, why: str) -> ImageError:
        return ImageError(f"registry {self.ref.registry} unreachable: {why}", reason="registry_unreachable",
                          fault=ENVIRONMENT)

    def _check_target(self, url: str) -> None:
        """A redirect or token realm: the registry's own host, or a public one (Rule 2)."""
        parts = urllib.parse.urlsplit(url)
        own = urllib.parse.urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._unreachable(f"it sent us to {_show(url)}")
        if parts.hostname == own.hostname:
            if parts.scheme == "http" and not is_loopback_host(parts.hostname):
                raise self._unreachable("it sent us to plain HTTP")
            return
        if parts.scheme != "https":
            raise self._unreachable(f"it sent us to plain HTTP ({_show(parts.hostname)})")
        for address in _resolve_host(parts.hostname, self.policy.timeout_s):
            why = address_refusal(address)
            if why is not None:
                raise ImageError(f"registry {self.ref.registry} sent us to {_show(parts.hostname)}, {why}",
                                 reason="registry_not_allowed", fault=ENVIRONMENT)

    def _get(self, url: str, headers: dict[str, str], limit_bytes: int) -> _Reply:
        """One GET with its redirects followed by hand; the body read within the timeout and limit."""
        for _ in range(MAX_REDIRECTS + 1):
            deadline = time.monotonic() + self.policy.timeout_s
            request = urllib.request.Request(url, headers={"User-Agent": "suanli", **headers})
            try:
                response = _OPENER.open(request, timeout=self.policy.timeout_s)
            except urllib.error.HTTPError as exc:
                response = exc
            except (urllib.error.URLError, OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
                raise self._unreachable(str(getattr(exc, "reason", None) or exc)) from exc
            with response:
                status = int(response.status or 0)
                if status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    if not location:
                        raise self._unreachable(f"HTTP {status} without a Location")
                    url = urllib.parse.urljoin(url, location)
                    self._check_target(url)
                    headers = {k: v for k, v in headers.items() if k != "Authorization"}
                    continue
                body = self._read(response, limit_bytes, deadline)
                return _Reply(status, {k.lower(): v for k, v in response.headers.items()}, body)
        raise self._unreachable(f"more than {MAX_REDIRECTS} redirects")

    def _read(self, response: Any, limit_bytes: int, deadline: float) -> bytes:
        chunks: list[bytes] = []
        got = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    raise self._unreachable(f"no complete answer within {self.policy.timeout_s:g} s")
                chunk = response.read(min(64 << 10, limit_bytes + 1 - got))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                got += len(chunk)
                if got > limit_bytes:
                    raise ImageError(f"registry {self.ref.registry} sent more than {format_bytes(limit_bytes)} "
                                     "where a manifest was expected", reason="image_format")
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            raise self._unreachable(str(exc)) from exc

    def _fetch_token(self, challenge: dict[str, str]) -> str:
        realm = challenge.get("realm", "")
        self._check_target(realm)
        query = {"scope": challenge.get("scope") or f"repository:{self.ref.repository}:pull"}
        if challenge.get("service"):
            query["service"] = challenge["service"]
        joiner = "&" if urllib.parse.urlsplit(realm).query else "?"
        reply = self._get(realm + joiner + urllib.parse.urlencode(query), {}, MAX_TOKEN_BYTES)
        if reply.status != 200:
            raise ImageError(f"{self.ref}: the registry gave no anonymous token (HTTP {reply.status}); only "
                             "public images can be pulled", reason="image_not_found")
        try:
            doc = json.loads(reply.body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise self._unreachable("its token service answered without a token")
        return token

    def manifest(self, digest: str) -> tuple[bytes, str]:
        """The manifest with this digest, its sha256 checked (Rule 3): (body, content type)."""
        url = f"{self.base}/v2/{self.ref.repository}/manifests/{digest}"
        for attempt in range(2):
            headers = {"Accept": ACCEPT}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            reply = self._get(url, headers, MAX_MANIFEST_BYTES)
            if reply.status == 401 and attempt == 0 and self.token is None:
                scheme, params = parse_challenge(reply.headers.get("www-authenticate", ""))
                if scheme == "bearer" and params.get("realm"):
                    self.token = self._fetch_token(params)
                    continue
            break
        where = f"{self.ref.name}@{digest}"
        if reply.status == 200:
            actual = "sha256:" + hashlib.sha256(reply.body).hexdigest()
            if actual != digest:
                raise ImageError(f"{where}: the registry served a manifest whose sha256 is {actual}, not the "
                                 "digest asked for", reason="image_mismatch", expected=digest, actual=actual)
            return reply.body, reply.headers.get("content-type", "")
        if reply.status == 404:
            raise ImageError(f"{where}: the registry has no such manifest (HTTP 404)", reason="image_not_found")
        if reply.status in (401, 403):
            raise ImageError(f"{where}: not found, or it needs credentials (HTTP {reply.status}); only public "
                             "images can be pulled", reason="image_not_found")
        if reply.status == 429 or reply.status >= 500:
            raise self._unreachable(f"HTTP {reply.status}")
        raise self._unreachable(f"it refused the request (HTTP {reply.status})")


def resolve(ref: ImageRef, policy: RegistryPolicy, platform: Platform | None = None) -> ResolvedImage:
    """Read the image's manifest (and, for an index, the one for `platform`, this machine's by
    default) under the policy (Rules 2 to 6); nothing is downloaded beyond manifests."""
    check_allowed(ref, policy)
    api = _RegistryApi(ref, policy)
    body, content_type = api.manifest(ref.digest)
    parsed = parse_manifest(body, content_type, what=str(ref))
    chosen: str | None = None
    manifest_digest = ref.digest
    if isinstance(parsed, ImageIndex):
        entry = choose_platform(parsed, platform or local_platform())
        chosen, manifest_digest = entry.platform, entry.digest
        body, content_type = api.manifest(entry.digest)
        if len(body) != entry.size:
            raise ImageError(f"{ref.name}@{entry.digest}: the manifest is {len(body)} bytes, the index says "
                             f"{entry.size}", reason="image_mismatch", expected=entry.size, actual=len(body))
        parsed = parse_manifest(body, content_type, what=f"{ref.name}@{entry.digest}")
        if isinstance(parsed, ImageIndex):
            raise _format(str(ref), "an index that points at another index is not followed")
    why = size_refusal(parsed.total_bytes, policy.max_image_bytes)
    if why is not None:
        raise ImageError(f"{ref}: {why}", reason="image_too_large", fault=ENVIRONMENT,
                         expected=policy.max_image_bytes, actual=parsed.total_bytes)
    return ResolvedImage(ref=ref, manifest_digest=manifest_digest, config_digest=parsed.config[0],
                         total_bytes=parsed.total_bytes, layers=parsed.layers, platform=chosen)


# -- the pull (engine) --------------------------------------------------------------------------------------


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class _Progress:
    """Bytes pulled, from the engine's messages, reported at most every PROGRESS_EVERY_S."""

    def __init__(self, resolved: ResolvedImage, sink: Callable[[str], None]) -> None:
        self.sizes = {digest.split(":", 1)[1][:12]: size for digest, size in resolved.layers}
        self.total = resolved.total_bytes
        self.done: dict[str, int] = {}
        self.sink = sink
        self.last = float("-inf")

    def feed(self, message: Mapping[str, Any]) -> None:
        layer, status = str(message.get("id") or ""), str(message.get("status") or "")
        if layer not in self.sizes:
            return
        detail = message.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail.get("current"), int):
            self.done[layer] = min(detail["current"], self.sizes[layer])
        elif status in ("Download complete", "Pull complete", "Already exists", "Verifying Checksum"):
            self.done[layer] = self.sizes[layer]
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.sink(f"pulling {sum(self.done.values()) // 10**6}/{self.total // 10**6} MB")


def _image_or_none(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    try:
        return dict(client.api.inspect_image(name))
    except docker.errors.ImageNotFound:
        return None


def _pull_failed(ref: ImageRef, why: object) -> ImageError:
    return ImageError(f"pulling {ref} failed: {_one_line(why)}", reason="pull_failed", fault=ENVIRONMENT)


def _stream(client: docker.DockerClient, resolved: ResolvedImage) -> tuple[Any, Iterator[Any]]:
    """POST /images/create for name@manifest_digest, without the provider's registry credentials
    (Rule 6) and with a read timeout (docker-py's pull has none: Rule 5)."""
    api = client.api
    response = api._post(api._url("/images/create"),
                         params={"fromImage": resolved.ref.name, "tag": resolved.manifest_digest},
                         stream=True, timeout=STALL_TIMEOUT_S)
    api._raise_for_status(response)
    return response, api._stream_helper(response, decode=True)


def pull(client: docker.DockerClient, resolved: ResolvedImage, progress: Callable[[str], None], *,
         timeout_s: float = 3600) -> str:
    """Have the engine pull resolved.ref.name@manifest_digest, then check what it reports (Rule 7);
    return the image id. `progress` gets "pulling 120/530 MB" about once a second."""
    ref = resolved.ref
    target = f"{ref.name}@{resolved.manifest_digest}"
    try:
        before = frozenset(str(i) for i in client.api.images(all=True, quiet=True))
    except FOREIGN as exc:
        raise _pull_failed(ref, f"the engine did not list its images: {exc}") from exc
    meter = _Progress(resolved, progress)
    deadline = time.monotonic() + timeout_s
    response = None
    try:
        response, messages = _stream(client, resolved)
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            if message.get("error") or message.get("errorDetail"):
                detail = message.get("errorDetail") or {}
                raise _pull_failed(ref, message.get("error") or detail.get("message"))
            meter.feed(message)
            if time.monotonic() > deadline:
                raise _pull_failed(ref, f"it took longer than {timeout_s:g} s")
    except docker.errors.APIError as exc:
        raise _pull_failed(ref, exc.explanation or exc) from exc
    except FOREIGN as exc:
        raise _pull_failed(ref, exc) from exc
    finally:
        if response is not None:
            response.close()
    try:
        attrs = _image_or_none(client, target)
    except FOREIGN as exc:
        raise _pull_failed(ref, f"the engine did not inspect the image: {exc}") from exc
    problem = None
    if attrs is None:
        problem = f"after the pull the engine has no image {target}"
    else:
        reported = set()
        for entry in attrs.get("RepoDigests") or []:
            try:
                named = parse_ref(str(entry))
            except ImageError:
                continue
            reported.add((named.registry, named.repository, named.digest))
        if (ref.registry, ref.repository, resolved.manifest_digest) not in reported:
            problem = f"the engine does not list {target} among the image's RepoDigests"
        elif attrs.get("Id") != resolved.config_digest:
            problem = (f"the engine reports image id {attrs.get('Id')}, not the manifest's config "
                       f"{resolved.config_digest}")
    if problem is not None:
        if attrs is not None and attrs.get("Id") not in before:
            try:
                client.api.remove_image(target)
            except FOREIGN:
                pass  # the mismatch is the error to report; a leftover is the image GC's
        raise ImageError(f"{ref}: {problem}", reason="image_mismatch", expected=resolved.config_digest,
                         actual=None if attrs is None else attrs.get("Id"))
    assert attrs is not None  # problem is set otherwise
    progress(f"pulled {format_bytes(resolved.total_bytes)}")
    return str(attrs["Id"])
