"""The engine pulls exactly the resolved manifest (sandbox.registry Rules 5, 7)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker
import docker.errors

from p2p.errors import ENVIRONMENT
from sandbox.engine import FOREIGN
from sandbox.errors import ImageError
from sandbox.registry.manifests import ResolvedImage, format_bytes
from sandbox.registry.refs import PROGRESS_EVERY_S, STALL_TIMEOUT_S, ImageRef, parse_ref

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
