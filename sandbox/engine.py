"""The one door to the Docker engine: connect, probe, and run blocking SDK calls off the trio loop.

Rule 1: docker-py is blocking; every call goes through `Engine.call`, which runs it in a worker thread
behind a CapacityLimiter and translates docker/requests exceptions into SandboxError once, here.
Rule 2: the client negotiates the API version (`version="auto"`): docker-py 7.2 defaults to 1.45,
which engines before 25.0 refuse (Docker 20.10 speaks at most 1.41).
Calls that block for the life of a job (wait, attach) take `own_thread=True`: they hold no limiter
token, so fifty long waits cannot starve the short calls.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests
import trio

from sandbox.errors import ImageError, SandboxError
from sandbox.plan import parse_toolkit_version
from sandbox.spec import EngineFacts

T = TypeVar("T")


def translate(exc: BaseException, what: str) -> SandboxError:
    """One foreign exception → one SandboxError (or ImageError) naming the call."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageError(f"{what}: image not found on this engine (it is never pulled): "
                          f"{exc.explanation}", status=404)
    if isinstance(exc, docker.errors.APIError):
        return SandboxError(f"{what}: Docker refused: {exc.explanation or exc}",
                            status=exc.status_code)
    return SandboxError(f"{what}: Docker engine unreachable or failed: {exc}")


FOREIGN = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


def connect(*, timeout_s: int = 300, max_pool_size: int = 128) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (or the local socket), or SandboxError."""
    try:
        client = docker.from_env(version="auto", timeout=timeout_s, max_pool_size=max_pool_size)
        client.ping()
    except FOREIGN as exc:
        raise SandboxError(f"no Docker engine answers ({exc}); start Docker or set DOCKER_HOST",
                           reason="no_engine") from exc
    return client


def toolkit_version() -> tuple[tuple[int, int, int] | None, str | None]:
    """The host's NVIDIA Container Toolkit version, or (None, why not)."""
    for tool in ("nvidia-ctk", "nvidia-container-cli"):
        path = shutil.which(tool)
        if path is None:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{tool} --version failed: {exc}"
        version = parse_toolkit_version(out)
        if version is not None:
            return version, None
    return None, "nvidia-ctk not found on PATH"


def probe_engine(client: docker.DockerClient) -> EngineFacts:
    """Runtimes, cgroup version and driver, and (if an nvidia runtime exists) the toolkit version."""
    try:
        info = client.info()
    except FOREIGN as exc:
        raise translate(exc, "docker info") from exc
    runtimes = frozenset((info.get("Runtimes") or {}).keys())
    version, why = toolkit_version() if "nvidia" in runtimes else (None, "no nvidia runtime")
    return EngineFacts(api_version=str(client.api.api_version), runtimes=runtimes,
                       cgroup_version=int(info.get("CgroupVersion") or 1),
                       cgroup_driver=str(info.get("CgroupDriver") or "cgroupfs"),
                       nvidia_toolkit_version=version, toolkit_probe_error=why)


class Engine:
    """A connected client plus the limiter its worker threads share."""

    def __init__(self, client: docker.DockerClient, *, max_threads: int = 16) -> None:
        self.client = client
        self.api = client.api
        self.limiter = trio.CapacityLimiter(max_threads)

    async def call(self, fn: Callable[..., T], *args: Any, what: str = "", own_thread: bool = False,
                   **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in a worker thread; docker errors become SandboxError."""
        bound = functools.partial(_translated, fn, what or getattr(fn, "__name__", "docker"), args, kwargs)
        if own_thread:
            # Cancelling abandons the thread; the caller stops the container so that it returns.
            # ignore: trio-typing's stubs (a libp2p dependency) predate abandon_on_cancel and shadow trio's own
            return await trio.to_thread.run_sync(bound, abandon_on_cancel=True,  # type: ignore[call-arg]
                                                 limiter=trio.CapacityLimiter(1))
        return await trio.to_thread.run_sync(bound, limiter=self.limiter)


def _translated(fn: Callable[..., T], what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    try:
        return fn(*args, **kwargs)
    except SandboxError:
        raise
    except FOREIGN as exc:
        raise translate(exc, what) from exc
