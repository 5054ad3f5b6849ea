"""Registry references and which registries a provider may reach (pure; sandbox.registry Rules 1-2)."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2p.errors import ENVIRONMENT
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
