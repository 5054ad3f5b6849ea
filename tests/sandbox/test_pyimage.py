"""sandbox.pyimage: the Debian python3 image (issue 19).

Pure core: the layer entries of a root filesystem tar (devices out, hard links copied, setuid cleared,
/io owned by 65534), the package set of a dpkg status file, the cache key, mmdebstrap's failure line.
With Docker (real mmdebstrap, real engine): a fresh build once per test session, then the same id from
the cache; two fresh builds give the same id; python3 runs as 65534 on a read-only root, as the sandbox
runs it. Under CI (SUANLI_REQUIRE_DOCKER=1) these run, never skip. The image is removed at the end
when this session loaded it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from sandbox import pyimage
from sandbox.archive import NOBODY, read_digests
from sandbox.errors import ImageError

REPO = Path(__file__).resolve().parents[2]
SESSION_CACHE = "python-image-cache"  # under the session's base temp: shared with the integration test


def _rootfs(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644,
          link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname, info.mtime = kind, size, mode, link, 1700000000
    return info


def test_rootfs_entries_drop_devices_copy_hard_links_and_clear_setuid():
    rootfs = _rootfs([
        (_info("./", tarfile.DIRTYPE, mode=0o755), None),
        (_info("./dev/", tarfile.DIRTYPE, mode=0o755), None),
        (_info("./dev/null", tarfile.CHRTYPE, mode=0o666), None),
        (_info("./usr/", tarfile.DIRTYPE, mode=0o755), None),
        (_info("./usr/bin/", tarfile.DIRTYPE, mode=0o755), None),
        (_info("./usr/bin/gunzip", size=5, mode=0o755), b"gzip!"),
        (_info("./usr/bin/uncompress", tarfile.LNKTYPE, link="./usr/bin/gunzip", mode=0o755), None),
        (_info("./usr/bin/su", size=2, mode=0o4755), b"su"),
        (_info("./bin", tarfile.SYMTYPE, link="usr/bin", mode=0o777), None),
        (_info("./var/mail/", tarfile.DIRTYPE, mode=0o2775), None),
    ])
    entries = {e.path: e for e in pyimage.rootfs_entries(rootfs)}
    assert "dev/null" not in entries and entries["dev"].kind == "dir"
    assert entries["usr/bin/uncompress"].kind == "file" and entries["usr/bin/uncompress"].data == b"gzip!"
    assert entries["usr/bin/su"].mode == 0o755 and entries["var/mail"].mode == 0o775
    assert entries["bin"].kind == "symlink" and entries["bin"].target == "usr/bin"
    assert entries["tmp"].mode == 0o1777
    for d in ("io", "io/in", "io/out"):
        assert (entries[d].kind, entries[d].uid, entries[d].gid) == ("dir", NOBODY, NOBODY)
    assert "" not in entries


def test_the_archive_is_the_same_bytes_whatever_the_mtimes_and_has_the_sandbox_config():
    def archive(mtime: int) -> bytes:
        info = _info("./usr/bin/python3", size=3, mode=0o755)
        info.mtime = mtime
        return pyimage.python_archive(_rootfs([(info, b"elf")]), "amd64")[0]

    first = archive(1)
    assert first == archive(2_000_000_000)
    config = read_digests(first).config["config"]
    assert isinstance(config, dict)
    assert config["WorkingDir"] == "/io" and "Entrypoint" not in config
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"] and any(e.startswith("PATH=") for e in config["Env"])


def test_installed_packages_reads_the_package_set_of_a_dpkg_status_file():
    status = (b"Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1+b1\n\n"
              b"Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
              b"Package: bash\nStatus: install ok installed\nPriority: required\nVersion: 5.2.15-2+b7\n")
    assert pyimage.installed_packages(status) == ["bash=5.2.15-2+b7", "python3=3.11.2-1+b1"]


def test_the_cache_key_follows_the_recipe():
    base = pyimage.Recipe(architecture="amd64")
    assert base.key() == pyimage.Recipe(architecture="amd64").key()
    assert base.key() != pyimage.Recipe(architecture="arm64").key()
    assert base.key() != pyimage.Recipe(architecture="amd64", packages=("python3", "python3-numpy")).key()
    assert base.key() != pyimage.Recipe(architecture="amd64", sources=(("debian.sources", "x"),)).key()


def test_failure_line_names_the_error():
    stderr = "I: chroot architecture amd64\nW: something\nE: apt-get update failed\nI: removing tempdir\n"
    assert pyimage.failure_line(stderr) == "E: apt-get update failed"
    assert pyimage.failure_line("") == "no output"


def test_without_mmdebstrap_the_error_says_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH with no mmdebstrap on it
    with pytest.raises(ImageError, match="install mmdebstrap"):
        pyimage.run_mmdebstrap(pyimage.Recipe(architecture="amd64"), tmp_path / "rootfs.tar", tmp_path)


@pytest.mark.slow
def test_a_build_that_fails_is_one_line(tmp_path):
    if shutil.which("mmdebstrap") is None and os.environ.get("SUANLI_REQUIRE_DOCKER") != "1":
        pytest.skip("mmdebstrap is not installed (`apt-get install mmdebstrap`)")
    bad = pyimage.Recipe(architecture="amd64", packages=("no-such-package-suanli",))
    with pytest.raises(ImageError, match=r"^mmdebstrap failed \(exit \d+\): .*") as info:
        pyimage.run_mmdebstrap(bad, tmp_path / "rootfs.tar", tmp_path, timeout_s=300)
    assert "\n" not in str(info.value)


# --- with the real engine: once per session --------------------------------------------------------------

def session_python_image(tmp_path_factory, docker_client):
    """(image id, CachedImage, build seconds, load seconds, loaded here) of the first build of this session,
    in the shared session cache; the image is removed at the end when it was not on the engine before."""
    from sandbox.images import local_image_id

    cache = tmp_path_factory.getbasetemp() / SESSION_CACHE
    started = time.monotonic()
    built = pyimage.build_python_archive(cache)  # the ids, before anything is loaded
    build_s = time.monotonic() - started
    ids = frozenset(d for d in (built.image_id, built.manifest_digest) if d)
    present_before = local_image_id(docker_client, ids) is not None
    started = time.monotonic()
    image_id, _ = pyimage.ensure_python_image_info(docker_client, cache)
    return image_id, built, build_s, time.monotonic() - started, not present_before


@pytest.fixture(scope="session")
def python_image(tmp_path_factory, docker_client):
    image_id, built, build_s, load_s, loaded_here = session_python_image(tmp_path_factory, docker_client)
    yield image_id, built, build_s, load_s
    if loaded_here:
        import docker.errors

        try:
            docker_client.images.remove(image_id, force=True)
        except docker.errors.APIError:
            pass  # already gone, or in use by a container that another test is removing


@pytest.mark.docker
@pytest.mark.slow
def test_building_twice_gives_the_same_id_the_second_time_from_the_cache(python_image, docker_client,
                                                                         tmp_path_factory):
    image_id, first, build_s, load_s = python_image
    started = time.monotonic()
    again, cached = pyimage.ensure_python_image_info(docker_client, tmp_path_factory.getbasetemp() / SESSION_CACHE)
    cached_s = time.monotonic() - started
    assert again == image_id and cached.from_cache and cached.image_id == first.image_id
    assert any(p.startswith("python3=") for p in cached.packages)
    tagged = docker_client.api.inspect_image(pyimage.PYTHON_TAG)
    assert tagged["Id"] == image_id
    print(f"\npython image {image_id}: first build {build_s:.1f} s (from cache: {first.from_cache}), "
          f"load {load_s:.1f} s, cached call {cached_s:.2f} s, archive {cached.size_bytes / 2**20:.1f} MiB, "
          f"{len(cached.packages)} packages, engine size {tagged['Size'] / 2**20:.1f} MiB")


@pytest.mark.docker
@pytest.mark.slow
def test_two_fresh_builds_give_the_same_id(python_image, tmp_path):
    image_id, first = python_image[:2]
    other = pyimage.build_python_archive(tmp_path / "cache", rebuild=True)
    assert not other.from_cache
    assert other.image_id == first.image_id == image_id
    assert other.archive_sha256 == first.archive_sha256
    record = json.loads(next((tmp_path / "cache").glob("python3-*.json")).read_text())
    assert record["image_id"] == image_id and record["packages"] == list(other.packages)


@pytest.mark.docker
def test_python_runs_as_nobody_on_a_read_only_root(python_image):
    image_id = python_image[0]
    done = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--user", "65534:65534", "--network", "none", "--cap-drop",
         "ALL", "--security-opt", "no-new-privileges", "--tmpfs", "/tmp", image_id, "python3", "-c",
         "import csv, hashlib, json, os, sqlite3, sys; "
         "print(json.dumps([os.getuid(), os.getcwd(), sys.dont_write_bytecode, sys.version_info[0]]))"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [65534, "/io", True, 3]
    assert done.stderr == ""


def test_the_cli_prints_one_line_when_the_engine_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sandbox.pyimage", "build", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no.sock",
                               "HOME": str(tmp_path)}, cwd=REPO)
    assert done.returncode == 1
    assert done.stderr.startswith("error: no Docker engine answers") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr

