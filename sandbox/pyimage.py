"""The Python image: a minimal Debian with python3, built offline from Debian packages, pinned by id.

    python -m sandbox.pyimage build [--cache DIR] [--rebuild]    # prints the image id

Rule 1: nothing comes from a registry. The root filesystem is made by ``mmdebstrap`` from Debian
packages through the host's Debian apt sources (variant ``essential`` plus ``python3``, without docs,
man pages, locales or apt lists), as a tar; the image archive is then written in pure Python
(sandbox.archive_writer), as the demo image is, so its id is known before ``docker load``.
Rule 2: the same packages give the same id: every layer entry has mtime 0 and empty owner names, the
entries are sorted, the config's created time is fixed, and mmdebstrap runs with SOURCE_DATE_EPOCH=0.
What the engine supplies itself is dropped (the contents of /dev: device nodes never enter a layer);
hard links become copies; setuid and setgid bits are cleared (the job runs with no-new-privileges).
Rule 3: the image suits the sandbox (sandbox.plan): the job runs as 65534 with a read-only root, so
the Env has PYTHONDONTWRITEBYTECODE=1 (and PYTHONUNBUFFERED=1, so the buyer sees lines as they come),
/io, /io/in and /io/out are owned by 65534, WorkingDir is /io, and there is no ENTRYPOINT.
Rule 4: the archive and its id are cached, keyed by the recipe (suite, variant, packages, excluded
paths, architecture, apt sources, RECIPE_VERSION): a second call is a ``docker load`` of the cached
archive, or nothing when the engine already has the id. The cache is checked as a buyer's archive is
(sandbox.images.load_image_archive): its sha256 and image id must be the recorded ones, else it is
built again. One builder at a time per cache directory: a lock file, waited for at most LOCK_WAIT_S.
Rule 5: every wait is bounded: mmdebstrap runs at most MMDEBSTRAP_TIMEOUT_S (then its whole process
group is killed); a failure is one line that says what to do (mmdebstrap missing: install it).
Rule 6: only the operator's own image is tagged (sandbox.images Rule 3): PYTHON_TAG, explicitly,
after the load.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker

from p2p.errors import ENVIRONMENT
from sandbox.archive import NOBODY, ArchiveDigests, LayerEntry, image_archive, layer_tar
from sandbox.engine import FOREIGN, connect, translate
from sandbox.errors import ImageError, SandboxError

PYTHON_TAG = "suanli/python:3"
RECIPE_VERSION = 1  # raise when the way the image is made changes: a new cache key, a new build
SUITE = "bookworm"
VARIANT = "essential"
PACKAGES = ("python3",)
EXCLUDED_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
                  "/usr/share/lintian/*")
MMDEBSTRAP_TIMEOUT_S = 600
LOCK_WAIT_S = 660  # a whole build of another process, and a little more
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"  # merged /usr without usrmerge (and perl)
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
       "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "riscv64": "riscv64"}
_CLEANUP = ('rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/* '
            '"$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old')
_HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


# --- the pure core ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """What the image is made of; its key names the cache entry (Rule 4)."""

    architecture: str
    sources: tuple[tuple[str, str], ...] = ()  # (file name, text) of the apt sources given to mmdebstrap
    suite: str = SUITE
    variant: str = VARIANT
    packages: tuple[str, ...] = PACKAGES
    excluded: tuple[str, ...] = EXCLUDED_PATHS

    def key(self) -> str:
        text = json.dumps({"arch": self.architecture, "sources": [list(s) for s in self.sources],
                           "suite": self.suite, "variant": self.variant, "packages": sorted(self.packages),
                           "excluded": list(self.excluded), "recipe": RECIPE_VERSION},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def rootfs_entries(rootfs: tarfile.TarFile) -> list[LayerEntry]:
    """The layer entries of a root filesystem tar (Rule 2) plus /io, /io/in and /io/out (Rule 3)."""
    entries: dict[str, LayerEntry] = {}
    for member in rootfs:
        path = member.name.removeprefix("./").strip("/")
        if not path or path.startswith("dev/") or path in ("io", "io/in", "io/out"):
            continue
        mode, uid, gid = member.mode & 0o1777, member.uid, member.gid  # no setuid/setgid
        if member.isdir():
            entries[path] = LayerEntry(path, "dir", mode, uid, gid)
        elif member.issym():
            entries[path] = LayerEntry(path, "symlink", 0o777, uid, gid, target=member.linkname)
        elif member.isfile() or member.islnk():  # a hard link becomes a copy of its target
            source = rootfs.extractfile(member)
            if source is None:
                raise ImageError(f"the root filesystem tar has an unreadable member {member.name}",
                                 fault=ENVIRONMENT)
            entries[path] = LayerEntry(path, "file", mode, uid, gid, data=source.read())
        # devices and fifos are left out: the engine gives the container its own /dev
    entries["dev"] = LayerEntry("dev", "dir", 0o755)
    entries.setdefault("tmp", LayerEntry("tmp", "dir", 0o1777))
    for d in ("io", "io/in", "io/out"):
        entries[d] = LayerEntry(d, "dir", 0o755, NOBODY, NOBODY)
    return list(entries.values())


def installed_packages(status: bytes) -> list[str]:
    """``name=version`` of every installed package in a dpkg status file, sorted: the package set."""
    found = []
    for stanza in status.decode("utf-8", "replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, flags=re.MULTILINE))
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            found.append(f"{fields['Package']}={fields.get('Version', '')}")
    return sorted(found)


def image_config() -> dict[str, object]:
    return {"User": f"{NOBODY}:{NOBODY}", "WorkingDir": "/io", "Env": list(ENV), "Cmd": ["python3"],
            "Labels": {"org.opencontainers.image.title": "suanli python3 (Debian, built locally)"}}


def python_archive(rootfs: tarfile.TarFile, architecture: str) -> tuple[bytes, ArchiveDigests]:
    """The image archive of a root filesystem tar: one layer, the config of Rule 3."""
    return image_archive(layer_tar(rootfs_entries(rootfs)), image_config(), architecture=architecture,
                         repo_tag=PYTHON_TAG)


def mmdebstrap_args(recipe: Recipe, out: Path, sources_file: Path | None) -> list[str]:
    args = ["mmdebstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
            "--mode=auto", "--format=tar", f"--architectures={recipe.architecture}"]
    if Path(MERGED_USR_HOOKS).is_dir():
        args.append(f"--hook-dir={MERGED_USR_HOOKS}")
    args += [f"--dpkgopt=path-exclude={p}" for p in recipe.excluded]
    args += [f"--customize-hook={_CLEANUP}", recipe.suite, str(out)]
    if sources_file is not None:
        args.append(str(sources_file))
    return args


def failure_line(stderr: str) -> str:
    """The line of mmdebstrap's stderr that says why it failed (the last "E:" line, else the last)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    line = (errors or lines or ["no output"])[-1]
    return line[:240]


# --- the shell: files, mmdebstrap, the engine --------------------------------------------------------

def default_cache_dir() -> Path:
    """``$SUANLI_IMAGE_CACHE``, else ``$XDG_CACHE_HOME/suanli/images``, else ``~/.cache/suanli/images``."""
    if os.environ.get("SUANLI_IMAGE_CACHE"):
        return Path(os.environ["SUANLI_IMAGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "suanli" / "images"


def host_recipe() -> Recipe:
    """This machine's recipe: its architecture and its Debian apt sources (those naming debian.org)."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    files: list[Path] = []
    main, folder = _HOST_SOURCES
    if main.is_file():
        files.append(main)
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    sources = []
    for path in files:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if "debian.org" in text:
                sources.append((path.name, text))
    return Recipe(architecture=arch, sources=tuple(sources))


@dataclass(frozen=True)
class CachedImage:
    """A built archive in the cache and what was recorded about it."""

    archive: Path
    image_id: str  # the config digest (classic store)
    manifest_digest: str | None  # the id under the containerd store
    archive_sha256: str
    size_bytes: int
    packages: tuple[str, ...]
    built_s: float  # how long the build took (mmdebstrap and the archive)
    from_cache: bool


def _paths(cache_dir: Path, recipe: Recipe) -> tuple[Path, Path]:
    stem = f"python3-{recipe.key()[:16]}"
    return cache_dir / f"{stem}.tar", cache_dir / f"{stem}.json"


def _read_cached(cache_dir: Path, recipe: Recipe) -> CachedImage | None:
    archive, record = _paths(cache_dir, recipe)
    try:
        meta = json.loads(record.read_text())
        if meta.get("key") != recipe.key() or archive.stat().st_size != meta["size_bytes"]:
            return None
        return CachedImage(archive, meta["image_id"], meta.get("manifest_digest"), meta["archive_sha256"],
                           meta["size_bytes"], tuple(meta.get("packages", ())), float(meta.get("built_s", 0)),
                           from_cache=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One builder per cache directory (Rule 4); ImageError after ``wait_s``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a+b") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ImageError(f"another process has been building the python image in {cache_dir} "
                                     f"for over {wait_s:.0f} s; try again later", fault=ENVIRONMENT) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_mmdebstrap(recipe: Recipe, out: Path, work_dir: Path, timeout_s: float = MMDEBSTRAP_TIMEOUT_S) -> None:
    """Make the root filesystem tar at ``out`` (Rules 1 and 5), or ImageError in one line."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap not found: install mmdebstrap (`apt-get install mmdebstrap`) to build "
                         "the python image", fault=ENVIRONMENT)
    sources_file = None
    if recipe.sources:
        sources_file = work_dir / "host.sources"
        # one-line-style .list entries and deb822 .sources stanzas cannot share a file: keep the deb822 ones
        deb822 = [text for name, text in recipe.sources if name.endswith(".sources")]
        if deb822:
            sources_file.write_text("\n\n".join(t.strip() for t in deb822) + "\n")
        else:
            sources_file = work_dir / "host.list"
            sources_file.write_text("\n".join(t.strip() for _, t in recipe.sources) + "\n")
    env = dict(os.environ, SOURCE_DATE_EPOCH="0", TMPDIR=str(work_dir), LC_ALL="C.UTF-8")
    try:
        proc = subprocess.Popen(mmdebstrap_args(recipe, out, sources_file), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    except OSError as exc:
        raise ImageError(f"mmdebstrap could not start: {exc}; install mmdebstrap", fault=ENVIRONMENT) from exc
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # apt and dpkg too, not only mmdebstrap
        proc.communicate()
        raise ImageError(f"mmdebstrap did not finish within {timeout_s:.0f} s (are the Debian mirrors in "
                         "the apt sources reachable?)", fault=ENVIRONMENT) from None
    if proc.returncode != 0:
        raise ImageError(f"mmdebstrap failed (exit {proc.returncode}): {failure_line(stderr)} (are the Debian "
                         "mirrors in the apt sources reachable?)", fault=ENVIRONMENT)


def build_python_archive(cache_dir: Path | None = None, *, rebuild: bool = False,
                         recipe: Recipe | None = None) -> CachedImage:
    """The python image's archive in the cache: the cached one, or a new build (Rule 4)."""
    cache_dir = cache_dir or default_cache_dir()
    recipe = recipe or host_recipe()
    with _cache_lock(cache_dir):
        if not rebuild and (cached := _read_cached(cache_dir, recipe)) is not None:
            return cached
        return _build(cache_dir, recipe)


def _build(cache_dir: Path, recipe: Recipe) -> CachedImage:
    started = time.monotonic()
    archive, record = _paths(cache_dir, recipe)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="build-") as tmp:
        work = Path(tmp)
        rootfs_path = work / "rootfs.tar"
        run_mmdebstrap(recipe, rootfs_path, work)
        try:
            with tarfile.open(rootfs_path) as rootfs:
                status = rootfs.extractfile("./var/lib/dpkg/status")
                packages = installed_packages(status.read() if status else b"")
                data, digests = python_archive(rootfs, recipe.architecture)
        except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
            raise ImageError(f"the root filesystem mmdebstrap made could not be read: {exc}",
                             fault=ENVIRONMENT) from exc
        partial = work / "archive.tar"
        partial.write_bytes(data)
        os.replace(partial, archive)
    built_s = time.monotonic() - started
    meta = {"key": recipe.key(), "image_id": digests.config_digest, "manifest_digest": digests.manifest_digest,
            "archive_sha256": digests.archive_sha256, "size_bytes": len(data), "packages": packages,
            "built_s": round(built_s, 3), "recipe": {"suite": recipe.suite, "variant": recipe.variant,
                                                      "packages": list(recipe.packages)}}
    partial_record = record.with_suffix(".json.partial")
    partial_record.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(partial_record, record)
    return CachedImage(archive, digests.config_digest, digests.manifest_digest, digests.archive_sha256,
                       len(data), tuple(packages), built_s, from_cache=False)


def load_cached(client: docker.DockerClient, cached: CachedImage) -> str:
    """The pinned id of a cached image on the engine: present already, or loaded and checked (Rule 4)."""
    from sandbox.images import local_image_id

    ids = frozenset(d for d in (cached.image_id, cached.manifest_digest) if d)
    present = local_image_id(client, ids)
    if present is not None:
        return present
    with open(cached.archive, "rb") as f:
        return _load(client, f, cached)


def _load(client: docker.DockerClient, f: IO[bytes], cached: CachedImage) -> str:
    from sandbox.images import load_image_archive

    try:
        return load_image_archive(client, f, archive_sha256=cached.archive_sha256, image_id=cached.image_id)
    except ImageError:
        if cached.manifest_digest is None:
            raise
        f.seek(0)  # a containerd image store names the image by its manifest digest instead
        return load_image_archive(client, f, archive_sha256=cached.archive_sha256,
                                  image_id=cached.manifest_digest)


def ensure_python_image(client: docker.DockerClient, cache_dir: Path | None = None) -> str:
    """Build (or take from the cache) and load the python image, tag it PYTHON_TAG; return its pinned id."""
    return ensure_python_image_info(client, cache_dir)[0]


def ensure_python_image_info(client: docker.DockerClient, cache_dir: Path | None = None, *,
                             rebuild: bool = False) -> tuple[str, CachedImage]:
    """``ensure_python_image``, with what the cache says about the image (size, packages, build time)."""
    cached = build_python_archive(cache_dir, rebuild=rebuild)
    try:
        loaded = load_cached(client, cached)
    except ImageError:
        if not cached.from_cache:
            raise
        cached = build_python_archive(cache_dir, rebuild=True)  # a damaged cache entry: build it again
        loaded = load_cached(client, cached)
    repository, tag = PYTHON_TAG.rsplit(":", 1)
    try:  # the operator's own image: the one tag Suanli sets, explicitly (Rule 6)
        client.api.tag(loaded, repository, tag)
    except FOREIGN as exc:
        raise translate(exc, "tag the python image") from exc
    return loaded, cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.pyimage")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or take from the cache) and load the python image; print its id")
    build.add_argument("--cache", type=Path, default=None, help="cache directory (default: $SUANLI_IMAGE_CACHE, "
                       "else $XDG_CACHE_HOME/suanli/images)")
    build.add_argument("--rebuild", action="store_true", help="build again even when the cache has the image")
    build.add_argument("--json", action="store_true", help="print one JSON line: id, size, packages, times")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        client = connect()
        try:
            image_id, cached = ensure_python_image_info(client, args.cache, rebuild=args.rebuild)
        finally:
            client.close()
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        doc: dict[str, Any] = {"image_id": image_id, "tag": PYTHON_TAG, "from_cache": cached.from_cache,
                               "archive": str(cached.archive), "size_bytes": cached.size_bytes,
                               "packages": len(cached.packages), "seconds": round(time.monotonic() - started, 3)}
        print(json.dumps(doc))
    else:
        print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
