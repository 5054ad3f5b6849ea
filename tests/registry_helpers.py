"""A real image registry for tests: Debian's `docker-registry` (the CNCF distribution server) on
127.0.0.1, with its storage in a temporary directory.

Rule 1: a real process, never a fake: it is started with a generated config (127.0.0.1, a free port,
filesystem storage under the test's directory, access log on), waited for on GET /v2/ (bounded), and
always killed at the end, also when the test fails.
Rule 2: skipped with the reason where `docker-registry` is missing, except under
SUANLI_REQUIRE_DOCKER=1 (CI), where a missing registry is a failure, never a silent skip.
Rule 3: it touches only what it creates: the tag it sets for a push is removed after the push; the
images a test builds are the test's to remove.

    from registry_helpers import LocalRegistry, registry  # noqa: F401  (the fixture)

    def test_x(registry, docker_client, demo_image):
        digest = registry.push(docker_client, demo_image, "suanli/demo")
        ref = f"{registry.host}/suanli/demo@{digest}"

The engine allows plain HTTP to registries on 127.0.0.0/8, so no certificate is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 10.0
PUSH_TIMEOUT_S = 300
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
READY_PROBE = "/v2/?ready=suanli-tests"  # the readiness probe's own request, left out of requests()
_ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRegistry:
    """One `docker-registry serve` process on 127.0.0.1 (a context manager; see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.storage = self.root / "registry-storage"
        self.host = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.root / "registry.log"

    # -- life ---------------------------------------------------------------------------------------

    def start(self) -> LocalRegistry:
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise FileNotFoundError(f"{REGISTRY_BINARY} not found on PATH (apt-get install docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # a free port can be taken between our probe and the registry's bind
            port = _free_port()
            self.host = f"127.0.0.1:{port}"
            config = self.root / "registry.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n")
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready():
                return self
            last_error = self._log_path.read_text(errors="replace")[-500:]
            self.stop()
        raise RuntimeError(f"docker-registry did not answer GET /v2/ within {START_TIMEOUT_S:.0f} s: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.host}{READY_PROBE}", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Kill the registry process (a registry that dies mid-pull); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that ignores SIGKILL
            pass

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- content ------------------------------------------------------------------------------------

    def push(self, client: Any, image_id: str, repo: str) -> str:
        """`docker tag` + `docker push` of an image on the engine to REPO here, then untag; returns the
        manifest digest the registry stored ("sha256:..."). The image keeps its other names; an image
        whose only name was the push tag is removed with it (push images that have a name of their own)."""
        tag = f"push-{uuid.uuid4().hex[:12]}"
        name = f"{self.host}/{repo}"
        client.api.tag(image_id, name, tag)
        digest = None
        try:
            for message in client.api.push(name, tag=tag, stream=True, decode=True):
                if message.get("error") or message.get("errorDetail"):
                    raise RuntimeError(f"docker push {name}:{tag} failed: {message.get('error')}")
                aux = message.get("aux") or {}
                if aux.get("Digest"):
                    digest = str(aux["Digest"])
        finally:
            client.api.remove_image(f"{name}:{tag}", noprune=True)
        if digest is None:
            raise RuntimeError(f"docker push {name}:{tag} reported no digest")
        return digest

    def blob_path(self, digest: str) -> Path:
        """The file the registry serves for a blob or a manifest with this digest (to tamper with)."""
        algorithm, hex_digest = digest.split(":", 1)
        return self.storage / "docker" / "registry" / "v2" / "blobs" / algorithm / hex_digest[:2] / hex_digest / "data"

    def requests(self) -> list[str]:
        """The requests the registry has logged so far, as "METHOD /path" ("GET /v2/r/blobs/sha256:..."),
        in order (to prove, say, that no layer blob was fetched)."""
        try:
            text = self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [f"{m.group(1)} {m.group(2)}" for m in _ACCESS_LINE.finditer(text) if m.group(2) != READY_PROBE]

    def put_index(self, repo: str, manifests: list[tuple[str, int, str, str]]) -> str:
        """Store an OCI image index over existing manifests of REPO, one (digest, size, os, arch) each,
        by HTTP PUT; returns the index's digest."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest,
             "size": size, "platform": {"os": os_name, "architecture": arch}}
            for digest, size, os_name, arch in manifests]}
        body = json.dumps(index).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        request = urllib.request.Request(f"http://{self.host}/v2/{repo}/manifests/{digest}", data=body,
                                         method="PUT", headers={"Content-Type": OCI_INDEX})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            if resp.status != 201:
                raise RuntimeError(f"PUT index: HTTP {resp.status}")
        return digest

    def manifest(self, repo: str, digest: str) -> tuple[bytes, str]:
        """The bytes and media type the registry serves for a manifest (for building indexes)."""
        accept = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                            "application/vnd.oci.image.manifest.v1+json", OCI_INDEX,
                            "application/vnd.docker.distribution.manifest.list.v2+json"])
        request = urllib.request.Request(f"http://{self.host}/v2/{repo}/manifests/{digest}",
                                         headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.read(), str(resp.headers.get("Content-Type", ""))


@contextlib.contextmanager
def local_registry(root: Path) -> Iterator[LocalRegistry]:
    """A started LocalRegistry, killed at the end; skips (or fails under SUANLI_REQUIRE_DOCKER=1)
    where docker-registry is missing (Rule 2)."""
    if shutil.which(REGISTRY_BINARY) is None:
        why = f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry)"
        if os.environ.get("SUANLI_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SUANLI_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(why)
    registry = LocalRegistry(root)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()
