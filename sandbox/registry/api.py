"""The registry HTTP API v2, read-only and anonymous (I/O; sandbox.registry Rules 3, 5, 6): resolve."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from p2p.errors import ENVIRONMENT
from sandbox.errors import ImageError
from sandbox.registry.manifests import (
    ImageIndex,
    ResolvedImage,
    _format,
    choose_platform,
    format_bytes,
    local_platform,
    parse_challenge,
    parse_manifest,
    size_refusal,
)
from sandbox.registry.refs import (
    ACCEPT,
    MAX_MANIFEST_BYTES,
    MAX_REDIRECTS,
    MAX_TOKEN_BYTES,
    ImageRef,
    Platform,
    RegistryPolicy,
    _resolve_host,
    _show,
    address_refusal,
    check_allowed,
    is_loopback_host,
    split_host,
)

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
