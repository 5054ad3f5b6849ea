"""The engine boundary without an engine: one error type out, whatever docker-py raised."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from p2p.errors import ImageError, SandboxError
from sandbox.engine import connect, translate


def test_no_engine_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    with pytest.raises(SandboxError) as info:
        connect(timeout_s=5)
    assert info.value.reason == "no_engine" and "DOCKER_HOST" in str(info.value)


@pytest.mark.parametrize("exc, kind, status", [
    (docker.errors.ImageNotFound("No such image: sha256:ab"), ImageError, 404),
    (docker.errors.APIError("500 Server Error", explanation="unknown or invalid runtime name: runsc"),
     SandboxError, None),
    (requests.exceptions.ConnectionError("refused"), SandboxError, None),
    (docker.errors.DockerException("Error while fetching server API version"), SandboxError, None),
])
def test_translate(exc, kind, status):
    err = translate(exc, "create container")
    assert type(err) is kind and str(err).startswith("create container: ")
    assert getattr(err, "status", None) == status
