"""Shared fixtures: deterministic keys and honest evidence to break in tests.

Rule 1 (issue 17 item 11): no test reads or writes the real home directory. Every test runs with
``HOME``, ``SUANLI_HOME`` and ``XDG_DATA_HOME`` pointing into its own temporary folder (``private_home``,
autouse), and the child processes it starts inherit them; a test that wants another data directory
passes ``--data-dir`` or sets ``SUANLI_HOME`` itself.
"""

from __future__ import annotations

import pytest

from settlement.testing import key_from_label, make_chain


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Rule 1: a temporary HOME (with SUANLI_HOME and XDG_DATA_HOME under it), created empty; the data
    directory itself is left for the code under test to create."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("SUANLI_HOME", str(home / ".local" / "share" / "suanli"))
    return home


@pytest.fixture
def provider_key():
    return key_from_label("provider")


@pytest.fixture
def buyer_key():
    return key_from_label("buyer")


@pytest.fixture
def evidence(provider_key, buyer_key):
    return make_chain(provider_key, buyer_key, 4)


@pytest.fixture(scope="session")
def docker_client():
    """A client for the local Docker engine. Skipped where none answers, except in CI
    (SUANLI_REQUIRE_DOCKER=1), where a missing engine is a failure, never a silent skip."""
    import os

    from p2p.errors import SandboxError
    from sandbox.engine import connect

    try:
        client = connect(timeout_s=120)
    except SandboxError as exc:
        if os.environ.get("SUANLI_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SUANLI_REQUIRE_DOCKER=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine answers: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def demo_image(docker_client):
    from sandbox.images import ensure_demo_image

    return ensure_demo_image(docker_client)


@pytest.fixture
def registry(tmp_path):
    """A real registry (Debian's docker-registry) on 127.0.0.1 for one test, its storage under tmp_path
    (tests/registry_helpers.py); skipped where it is missing, failed instead under SUANLI_REQUIRE_DOCKER=1."""
    from registry_helpers import local_registry

    with local_registry(tmp_path) as started:
        yield started
