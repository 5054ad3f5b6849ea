"""Images from registries, pinned by digest: parse the reference, apply the provider's policy, read the
manifest (registry HTTP API v2), and have the engine pull exactly that manifest.

Blocking code: callers run it in a worker thread. The package: ``refs`` (references, which
registries), ``manifests`` (manifests, indexes, platforms), ``api`` (the registry's HTTP API:
``resolve``), ``pull``. The pure parts (parse_ref, registry_refusal,
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

from sandbox.registry.api import resolve
from sandbox.registry.manifests import (
    ImageIndex,
    ImageManifest,
    IndexEntry,
    ResolvedImage,
    choose_platform,
    format_bytes,
    local_platform,
    parse_challenge,
    parse_manifest,
    platform_text,
    size_refusal,
)
from sandbox.registry.pull import pull
from sandbox.registry.refs import (
    DOCKER_HUB,
    DOCKER_HUB_API,
    ImageRef,
    Platform,
    RegistryPolicy,
    address_refusal,
    check_allowed,
    is_loopback_host,
    is_registry_ref,
    normalize_registry,
    parse_ref,
    registry_refusal,
    split_host,
)

__all__ = [
    "DOCKER_HUB", "DOCKER_HUB_API", "ImageIndex", "ImageManifest", "ImageRef", "IndexEntry", "Platform",
    "RegistryPolicy", "ResolvedImage", "address_refusal", "check_allowed", "choose_platform", "format_bytes",
    "is_loopback_host", "is_registry_ref", "local_platform", "normalize_registry", "parse_challenge",
    "parse_manifest", "parse_ref", "platform_text", "pull", "registry_refusal", "resolve", "size_refusal",
    "split_host",
]
