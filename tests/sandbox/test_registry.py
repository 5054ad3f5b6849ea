"""sandbox.registry: references, policy, manifests (pure), then resolve and pull against a REAL
registry process (Debian's docker-registry on 127.0.0.1, tests/registry_helpers.py) and the REAL
Docker engine. Every image a test builds or pulls is removed at its end, also on failure; the demo
image is shared and only ever gains and loses a repo digest of a test registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from registry_helpers import LocalRegistry

from p2p.errors import ENVIRONMENT, PEER
from sandbox.errors import ImageError
from sandbox.registry import (
    DOCKER_HUB,
    ImageIndex,
    ImageManifest,
    IndexEntry,
    RegistryPolicy,
    address_refusal,
    choose_platform,
    format_bytes,
    is_registry_ref,
    local_platform,
    parse_challenge,
    parse_manifest,
    parse_ref,
    pull,
    registry_refusal,
    resolve,
    size_refusal,
)

DIGEST = "sha256:" + "ab" * 32


# -- references ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "registry_host", "repository", "repo_digest"), [
    (f"127.0.0.1:5000/suanli/python@{DIGEST}", "127.0.0.1:5000", "suanli/python", None),
    (f"ghcr.io/org/app@{DIGEST}", "ghcr.io", "org/app", None),
    (f"Registry.Example.COM:443/a/b/c@{DIGEST}", "registry.example.com:443", "a/b/c", None),
    (f"localhost/x@{DIGEST}", "localhost", "x", None),
    (f"ubuntu@{DIGEST}", DOCKER_HUB, "library/ubuntu", f"ubuntu@{DIGEST}"),
    (f"user/app@{DIGEST}", DOCKER_HUB, "user/app", f"user/app@{DIGEST}"),
    (f"docker.io/library/ubuntu@{DIGEST}", DOCKER_HUB, "library/ubuntu", f"ubuntu@{DIGEST}"),
    (f"registry-1.docker.io/ubuntu@{DIGEST}", DOCKER_HUB, "library/ubuntu", f"ubuntu@{DIGEST}"),
    (f"index.docker.io/my_org/my-app.v2@{DIGEST}", DOCKER_HUB, "my_org/my-app.v2", f"my_org/my-app.v2@{DIGEST}"),
])
def test_parse_ref_accepts_pinned_references(text, registry_host, repository, repo_digest):
    ref = parse_ref(text)
    assert (ref.registry, ref.repository, ref.digest) == (registry_host, repository, DIGEST)
    assert str(ref) == f"{registry_host}/{repository}@{DIGEST}"
    assert ref.name == f"{registry_host}/{repository}"
    assert ref.repo_digest == (repo_digest or str(ref))
    assert parse_ref(str(ref)) == ref and parse_ref(ref.repo_digest) == ref
    assert is_registry_ref(text)


def test_docker_hub_is_reached_at_its_api_host():
    assert parse_ref(f"ubuntu@{DIGEST}").api_host == "registry-1.docker.io"
    assert parse_ref(f"127.0.0.1:5000/x@{DIGEST}").api_host == "127.0.0.1:5000"


def test_a_local_image_id_is_not_a_registry_reference():
    assert not is_registry_ref(DIGEST)
    assert not is_registry_ref("suanli/demo:busybox")


@pytest.mark.parametrize(("text", "reason", "says"), [
    ("127.0.0.1:5000/suanli/python:3.11", "image_tag", "pin a registry image by digest"),
    ("127.0.0.1:5000/suanli/python", "image_tag", "a tag can change under you"),
    ("ubuntu", "image_tag", "REGISTRY/REPO@sha256:<64 hex>"),
    (f"ubuntu:22.04@{DIGEST}", "image_tag", "without a tag"),
    (f"127.0.0.1:5000/suanli/python:latest@{DIGEST}", "image_tag", "without a tag"),
    ("ubuntu@sha256:abc", "image_ref", "sha256:<64 lowercase hex>"),
    ("ubuntu@sha256:" + "AB" * 32, "image_ref", "sha256:<64 lowercase hex>"),
    ("ubuntu@sha512:" + "ab" * 64, "image_ref", "sha256:<64 lowercase hex>"),
    (f"ghcr.io/Org/App@{DIGEST}", "image_ref", "lower case"),
    (f"ghcr.io/org/a pp@{DIGEST}", "image_ref", "not a valid repository name"),
    (f"ghcr.io/org/app!@{DIGEST}", "image_ref", "not a valid repository name"),
    (f"ghcr.io//app@{DIGEST}", "image_ref", "not a valid repository name"),
    (f"ghcr.io/org/-app@{DIGEST}", "image_ref", "not a valid repository name"),
    (f"ghcr.io/org/app\n@{DIGEST}", "image_ref", "not a valid repository name"),
    (f"bad_host.io:5000/app@{DIGEST}", "image_ref", "not a valid registry host"),
    (f"host.io:99999/app@{DIGEST}", "image_ref", "no valid port"),
    (f"[::1]:5000/app@{DIGEST}", "image_ref", "not a valid"),
    ("ghcr.io/" + "a" * 250 + f"@{DIGEST}", "image_ref", "longer than 255"),
    ("", "image_tag", "pin a registry image by digest"),
])
def test_parse_ref_refuses_with_one_line(text, reason, says):
    with pytest.raises(ImageError) as caught:
        parse_ref(text)
    message = str(caught.value)
    assert caught.value.reason == reason
    assert fault_is(caught.value, PEER)
    assert says in message
    assert message.startswith("--image ") and "\n" not in message and len(message) < 400


def fault_is(exc: ImageError, fault: str) -> bool:
    return exc.fault == fault


# -- which registries ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.1.1", "private"), ("100.64.0.1", "private"), ("100.127.255.254", "private"),
    ("198.18.0.1", "private"), ("198.19.255.1", "private"), ("fc00::1", "private"), ("fd12::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("224.0.0.1", "multicast"),
])
def test_non_public_addresses_are_refused(address, why):
    assert why in (address_refusal(address) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "104.18.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111"])
def test_public_addresses_pass(address):
    assert address_refusal(address) is None


def test_registry_refusal_without_an_allowed_list():
    assert registry_refusal("ghcr.io", (), ["140.82.112.33"]) is None
    why = registry_refusal("evil.example", (), ["140.82.112.33", "10.0.0.5"])
    assert why is not None and "10.0.0.5" in why and "private" in why and "lists" in why
    assert "loopback" in (registry_refusal("127.0.0.1:5000", (), ["127.0.0.1"]) or "")
    assert "loopback" in (registry_refusal("localhost:5000", (), []) or "")


def test_registry_refusal_with_an_allowed_list():
    assert registry_refusal("127.0.0.1:5000", ("127.0.0.1:5000",), []) is None  # listed explicitly
    assert registry_refusal("docker.io", ("registry-1.docker.io",), []) is None
    why = registry_refusal("ghcr.io", ("127.0.0.1:5000", "quay.io"), ["140.82.112.33"])
    assert why is not None and "127.0.0.1:5000, quay.io" in why
    assert registry_refusal("127.0.0.1:5001", ("127.0.0.1:5000",), []) is not None  # the port counts


# -- manifests and platforms ----------------------------------------------------------------------------------


def _entry(os_name: str, arch: str, variant: str | None = None, n: int = 1) -> IndexEntry:
    return IndexEntry(digest="sha256:" + f"{n:02x}" * 32, size=500, os=os_name, architecture=arch, variant=variant)


def test_choose_platform():
    index = ImageIndex(entries=(
        _entry("unknown", "unknown", n=1), _entry("linux", "arm", "v6", n=2), _entry("linux", "arm", "v7", n=3),
        _entry("linux", "arm64", "v8", n=4), _entry("linux", "amd64", "v3", n=5), _entry("linux", "amd64", n=6),
        _entry("windows", "amd64", n=7)))
    assert choose_platform(index, ("linux", "amd64", None)).digest == "sha256:" + "06" * 32
    assert choose_platform(index, ("linux", "arm64", None)).digest == "sha256:" + "04" * 32
    assert choose_platform(index, ("linux", "arm", "v7")).digest == "sha256:" + "03" * 32
    assert choose_platform(index, ("linux", "arm", None)).digest == "sha256:" + "03" * 32  # v7 is arm's default
    assert choose_platform(index, ("windows", "amd64", None)).platform == "windows/amd64"


def test_a_missing_platform_names_those_the_index_has():
    index = ImageIndex(entries=(_entry("linux", "s390x"), _entry("linux", "arm64", "v8"),
                                _entry("unknown", "unknown")))
    with pytest.raises(ImageError) as caught:
        choose_platform(index, ("linux", "amd64", None))
    assert caught.value.reason == "image_platform" and caught.value.fault == ENVIRONMENT
    assert str(caught.value) == ("the image index has no manifest for linux/amd64 (it has linux/arm64/v8, "
                                 "linux/s390x)")


def test_local_platform_is_linux():
    os_name, arch, _ = local_platform()
    assert os_name == "linux" and arch and arch != "x86_64"


def test_parse_manifest_reads_sizes():
    body = (b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
            b'"config":{"digest":"' + DIGEST.encode() + b'","size":100},"layers":['
            b'{"digest":"sha256:' + b"01" * 32 + b'","size":1000},{"digest":"sha256:' + b"02" * 32
            + b'","size":20}]}')
    parsed = parse_manifest(body)
    assert isinstance(parsed, ImageManifest)
    assert parsed.config == (DIGEST, 100) and parsed.total_bytes == 1120 and len(parsed.layers) == 2
    oci = parse_manifest(b'{"schemaVersion":2,"config":{"digest":"' + DIGEST.encode() + b'","size":1},"layers":[]}',
                         "application/vnd.oci.image.manifest.v1+json")
    assert isinstance(oci, ImageManifest) and oci.total_bytes == 1


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"schemaVersion":1,"fsLayers":[]}',
    b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}',
    b'{"schemaVersion":2,"config":{"digest":"sha256:x","size":1},"layers":[]}',
    b'{"schemaVersion":2,"config":{"digest":"' + DIGEST.encode() + b'","size":-1},"layers":[]}',
    b'{"schemaVersion":2,"config":{"digest":"' + DIGEST.encode() + b'","size":true},"layers":[]}',
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{}}',
    b'{"schemaVersion":2,"mediaType":"text/plain"}',
])
def test_parse_manifest_refuses_malformed(body):
    with pytest.raises(ImageError) as caught:
        parse_manifest(body)
    assert caught.value.reason == "image_format" and "\n" not in str(caught.value)


def test_size_refusal_states_both_sizes():
    assert size_refusal(2_000_000_000, 2_000_000_000) is None
    assert size_refusal(5_300_000_000, 2_000_000_000) == "the image is 5.3 GB, this provider takes at most 2.0 GB"
    assert format_bytes(120_400_000) == "120 MB" and format_bytes(1500) == "2 kB"


def test_parse_challenge():
    scheme, params = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                     'scope="repository:library/ubuntu:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/ubuntu:pull"}
    assert parse_challenge('Basic realm="registry"') == ("basic", {"realm": "registry"})


# -- against a real registry and the real engine ---------------------------------------------------------------


@pytest.fixture
def owned(docker_client) -> Iterator[list[str]]:
    """Image references this test created; each is removed at the end (never the demo image's id)."""
    names: list[str] = []
    yield names
    for name in reversed(names):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            docker_client.api.remove_image(name, force=True)


def _build_small(client, demo_image: str, work: Path, owned: list[str]) -> str:
    """A one-layer image FROM the demo image, with random bytes in it (so no other image shares its
    layer); tagged with a name of its own, which `owned` removes."""
    work.mkdir()
    (work / "payload").write_bytes(os.urandom(256 << 10))
    (work / "Dockerfile").write_text(f"FROM {demo_image}\nCOPY payload /payload\n")
    tag = f"suanli-test/registry-small:{uuid.uuid4().hex[:12]}"
    owned.append(tag)
    for message in client.api.build(path=str(work), tag=tag, rm=True, forcerm=True, decode=True, pull=False):
        if message.get("error"):
            raise RuntimeError(message["error"])
    return str(client.api.inspect_image(tag)["Id"])


def _gone(client, name: str) -> bool:
    try:
        client.api.inspect_image(name)
    except docker.errors.ImageNotFound:
        return True
    return False


def _policy(registry: LocalRegistry, **kwargs) -> RegistryPolicy:
    return RegistryPolicy(allowed=(registry.host,), timeout_s=10.0, **kwargs)


def _blob_gets(registry: LocalRegistry) -> list[str]:
    return [line for line in registry.requests() if line.startswith("GET ") and "/blobs/" in line]


@pytest.mark.docker
def test_resolve_and_pull_by_digest(registry, docker_client, demo_image, owned, tmp_path):
    image_id = _build_small(docker_client, demo_image, tmp_path / "ctx", owned)
    digest = registry.push(docker_client, image_id, "suanli/small")
    docker_client.api.remove_image(owned.pop())  # gone from the engine, so the pull must download its layer
    assert _gone(docker_client, image_id)
    ref = parse_ref(f"{registry.host}/suanli/small@{digest}")
    owned.append(str(ref))

    resolved = resolve(ref, _policy(registry))
    assert resolved.manifest_digest == digest and resolved.config_digest == image_id
    assert resolved.platform is None and len(resolved.layers) == 2
    config_bytes = registry.blob_path(image_id).stat().st_size
    assert resolved.total_bytes == config_bytes + sum(size for _, size in resolved.layers)
    assert [registry.blob_path(d).stat().st_size for d, _ in resolved.layers] == [s for _, s in resolved.layers]
    assert not _blob_gets(registry)  # resolve reads manifests only

    lines: list[str] = []
    assert pull(docker_client, resolved, lines.append) == image_id
    attrs = docker_client.api.inspect_image(image_id)
    assert f"{registry.host}/suanli/small@{digest}" in attrs["RepoDigests"]
    assert lines and lines[0].startswith("pulling ") and lines[-1].startswith("pulled ")
    top_layer = resolved.layers[-1][0]
    assert f"GET /v2/suanli/small/blobs/{top_layer}" in registry.requests()


@pytest.mark.docker
def test_a_tag_at_the_registry_is_refused(registry):
    with pytest.raises(ImageError) as caught:
        parse_ref(f"{registry.host}/suanli/demo:busybox")
    assert caught.value.reason == "image_tag"
    assert not registry.requests()


@pytest.mark.docker
def test_a_tampered_manifest_is_a_mismatch(registry, docker_client, demo_image):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    path = registry.blob_path(digest)
    body = path.read_bytes()
    tampered = body.replace(b"   ", b"  \t", 1)  # the same size, other bytes
    assert tampered != body and len(tampered) == len(body)
    path.write_bytes(tampered)
    ref = parse_ref(f"{registry.host}/suanli/demo@{digest}")
    with pytest.raises(ImageError) as caught:
        resolve(ref, _policy(registry))
    assert caught.value.reason == "image_mismatch" and caught.value.fault == PEER
    assert caught.value.actual == "sha256:" + hashlib.sha256(tampered).hexdigest()
    assert not _blob_gets(registry)
    assert str(ref) not in docker_client.api.inspect_image(demo_image).get("RepoDigests", [])


@pytest.mark.docker
def test_a_tampered_layer_fails_the_pull_and_leaves_no_image(registry, docker_client, demo_image, owned, tmp_path):
    image_id = _build_small(docker_client, demo_image, tmp_path / "ctx", owned)
    digest = registry.push(docker_client, image_id, "suanli/small")
    docker_client.api.remove_image(owned.pop())
    ref = parse_ref(f"{registry.host}/suanli/small@{digest}")
    owned.append(str(ref))
    resolved = resolve(ref, _policy(registry))
    layer = registry.blob_path(resolved.layers[-1][0])
    layer.write_bytes(os.urandom(layer.stat().st_size))
    with pytest.raises(ImageError) as caught:
        pull(docker_client, resolved, lambda line: None)
    assert caught.value.reason == "pull_failed" and caught.value.fault == ENVIRONMENT
    assert "\n" not in str(caught.value)
    assert _gone(docker_client, image_id) and _gone(docker_client, str(ref))


@pytest.mark.docker
def test_an_oversized_image_is_refused_before_any_layer(registry, docker_client, demo_image):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    ref = parse_ref(f"{registry.host}/suanli/demo@{digest}")
    before = len(registry.requests())
    with pytest.raises(ImageError) as caught:
        resolve(ref, _policy(registry, max_image_bytes=100_000))
    assert caught.value.reason == "image_too_large"
    assert "this provider takes at most 100 kB" in str(caught.value)
    seen = registry.requests()[before:]
    assert seen == [f"GET /v2/suanli/demo/manifests/{digest}"]


@pytest.mark.docker
def test_a_registry_not_allowed_is_refused_before_any_request(registry, docker_client, demo_image):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    ref = parse_ref(f"{registry.host}/suanli/demo@{digest}")
    before = len(registry.requests())
    for policy in (RegistryPolicy(), RegistryPolicy(allowed=("registry.example.com",))):
        with pytest.raises(ImageError) as caught:
            resolve(ref, policy)
        assert caught.value.reason == "registry_not_allowed" and caught.value.fault == ENVIRONMENT
    assert registry.requests()[before:] == []


@pytest.mark.docker
def test_an_index_resolves_to_the_local_platform(registry, docker_client, demo_image, owned):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    body, _ = registry.manifest("suanli/demo", digest)
    os_name, arch, _ = local_platform()
    other = "s390x" if arch != "s390x" else "amd64"
    index = registry.put_index("suanli/demo", [(digest, len(body), "linux", other), (digest, len(body), os_name, arch)])
    ref = parse_ref(f"{registry.host}/suanli/demo@{index}")
    resolved = resolve(ref, _policy(registry))
    assert resolved.manifest_digest == digest and resolved.platform == f"linux/{arch}"
    assert resolved.config_digest == demo_image
    owned.append(f"{registry.host}/suanli/demo@{digest}")  # untags only: the demo image keeps its own tag
    assert pull(docker_client, resolved, lambda line: None) == demo_image
    assert f"{registry.host}/suanli/demo@{digest}" in docker_client.api.inspect_image(demo_image)["RepoDigests"]


@pytest.mark.docker
def test_an_index_without_this_platform_says_which_it_has(registry, docker_client, demo_image):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    body, _ = registry.manifest("suanli/demo", digest)
    index = registry.put_index("suanli/demo", [(digest, len(body), "linux", "s390x"),
                                               (digest, len(body), "windows", "amd64")])
    with pytest.raises(ImageError) as caught:
        resolve(parse_ref(f"{registry.host}/suanli/demo@{index}"), _policy(registry), ("linux", "riscv64", None))
    assert caught.value.reason == "image_platform"
    assert "(it has linux/s390x, windows/amd64)" in str(caught.value)


@pytest.mark.docker
def test_a_missing_manifest_is_not_found(registry):
    with pytest.raises(ImageError) as caught:
        resolve(parse_ref(f"{registry.host}/suanli/none@{DIGEST}"), _policy(registry))
    assert caught.value.reason == "image_not_found" and "HTTP 404" in str(caught.value)


@pytest.mark.docker
def test_a_stopped_registry(registry, docker_client, demo_image):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    ref = parse_ref(f"{registry.host}/suanli/demo@{digest}")
    resolved = resolve(ref, _policy(registry))
    registry.stop()
    with pytest.raises(ImageError) as caught:
        pull(docker_client, resolved, lambda line: None)
    assert caught.value.reason == "pull_failed" and "\n" not in str(caught.value)
    assert str(ref) not in docker_client.api.inspect_image(demo_image).get("RepoDigests", [])
    with pytest.raises(ImageError) as caught:
        resolve(ref, _policy(registry))
    assert caught.value.reason == "registry_unreachable" and caught.value.fault == ENVIRONMENT


@pytest.mark.docker
def test_an_engine_that_reports_another_id_is_a_mismatch_and_the_image_goes(registry, docker_client, demo_image,
                                                                             owned, tmp_path):
    image_id = _build_small(docker_client, demo_image, tmp_path / "ctx", owned)
    digest = registry.push(docker_client, image_id, "suanli/small")
    docker_client.api.remove_image(owned.pop())
    ref = parse_ref(f"{registry.host}/suanli/small@{digest}")
    owned.append(str(ref))
    resolved = dataclasses.replace(resolve(ref, _policy(registry)), config_digest=DIGEST)
    with pytest.raises(ImageError) as caught:
        pull(docker_client, resolved, lambda line: None)
    assert caught.value.reason == "image_mismatch" and caught.value.actual == image_id
    assert _gone(docker_client, image_id)


@pytest.mark.docker
def test_a_mismatch_leaves_an_image_that_was_there_before(registry, docker_client, demo_image, owned):
    digest = registry.push(docker_client, demo_image, "suanli/demo")
    ref = parse_ref(f"{registry.host}/suanli/demo@{digest}")
    owned.append(str(ref))
    resolved = dataclasses.replace(resolve(ref, _policy(registry)), config_digest=DIGEST)
    with pytest.raises(ImageError) as caught:
        pull(docker_client, resolved, lambda line: None)
    assert caught.value.reason == "image_mismatch"
    assert docker_client.api.inspect_image(demo_image)["Id"] == demo_image
