"""Images without a registry: load a buyer's archive after checking it, build the demo image.

Rule 1: nothing is ever pulled. An image is used only by its pinned id; an archive is loaded only if
its sha256 is the agreed one, its recomputed digests contain the agreed image id, and the engine then
reports that id (config digest on the classic store, manifest digest on the containerd store).
Rule 3: what `docker load` sees is never the buyer's tar but a clean copy of its one image, without a
tag (sandbox.archive Rule 3), written to a temporary file and streamed: a load can add that image and
nothing else, and change no tag. Only the operator's own demo image is tagged, explicitly.
Rule 4 (issue 19): after a buyer's archive loads, its uncompressed layers go into the provider's layer
store (sandbox.layerstore), so that a later archive sharing them is shipped without them; such a
partial archive is rebuilt from the store and checked by its image id and every layer's diff id.
Rule 2: the demo image is `FROM scratch` + a static busybox, written as a deterministic archive in
pure Python, so its id is known before `docker load` and equal on every machine with the same busybox.

    python -m sandbox.images build-demo [--busybox PATH]    # prints the image id
"""

from __future__ import annotations

import argparse
import io
import platform
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import docker

from p2p.errors import ENVIRONMENT
from sandbox.archive import (
    NOBODY,
    ArchiveDigests,
    LayerEntry,
    image_archive,
    inspect_archive,
    layer_tar,
    write_clean_archive,
)
from sandbox.archive_layers import LayerSource, store_layers
from sandbox.engine import FOREIGN, connect, translate
from sandbox.errors import ImageError, SandboxError
from sandbox.spec import pinned_image_id

DEFAULT_BUSYBOX = "/bin/busybox"
DEMO_TAG = "suanli/demo:busybox"
_ESSENTIAL_APPLETS = ("sh", "cat", "cp", "echo", "head", "id", "ls", "sleep", "touch", "tr", "yes")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "riscv64": "riscv64"}


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP), i.e. static."""
    if data[:4] != b"\x7fELF":
        return False
    wide, endian = data[4] == 2, "<" if data[5] == 1 else ">"
    if wide:
        phoff, = struct.unpack_from(endian + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(endian + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x2A)
    types = [struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def read_busybox(path: str = DEFAULT_BUSYBOX) -> bytes:
    """The bytes of a static busybox, or ImageError with the one-line fix."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"static busybox not found at {path}: install it (`apt-get install "
                         "busybox-static`) or pass --busybox PATH", path=path, fault=ENVIRONMENT) from exc
    if not is_static_elf(data):
        raise ImageError(f"{path} is not a statically linked busybox: install `busybox-static` "
                         "or pass --busybox PATH", path=path, fault=ENVIRONMENT)
    return data


def busybox_applets(path: str) -> list[str]:
    try:
        out = subprocess.run([path, "--list"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return list(_ESSENTIAL_APPLETS)
    return sorted({a for a in out.split() if a.isidentifier() or a.replace("-", "").isalnum()}
                  | set(_ESSENTIAL_APPLETS))


def build_demo_archive(busybox_path: str = DEFAULT_BUSYBOX) -> tuple[bytes, ArchiveDigests]:
    """The demo image archive: /bin/busybox, applet links, /io/{in,out} owned by 65534, /tmp."""
    busybox = read_busybox(busybox_path)
    entries = [LayerEntry("bin", "dir"), LayerEntry("bin/busybox", "file", 0o755, data=busybox),
               LayerEntry("etc", "dir"),
               LayerEntry("etc/passwd", "file", 0o644, data=b"root:x:0:0:root:/:/bin/sh\n"
                          b"nobody:x:65534:65534:nobody:/io:/bin/sh\n"),
               LayerEntry("etc/group", "file", 0o644, data=b"root:x:0:\nnogroup:x:65534:\n"),
               LayerEntry("tmp", "dir", 0o1777)]
    entries += [LayerEntry(d, "dir", 0o755, NOBODY, NOBODY) for d in ("io", "io/in", "io/out")]
    entries += [LayerEntry(f"bin/{a}", "symlink", 0o777, target="busybox")
                for a in busybox_applets(busybox_path) if a != "busybox"]
    config = {"User": f"{NOBODY}:{NOBODY}", "WorkingDir": "/io", "Env": ["PATH=/bin"],
              "Cmd": ["/bin/sh"], "Labels": {"org.opencontainers.image.title": "suanli demo busybox"}}
    arch = _ARCH.get(platform.machine(), platform.machine())
    return image_archive(layer_tar(entries), config, architecture=arch, repo_tag=DEMO_TAG)


def local_image_id(client: docker.DockerClient, ids: frozenset[str]) -> str | None:
    """The first of `ids` present on the engine (never pulled), or None."""
    for image_id in sorted(ids):
        try:
            return str(client.api.inspect_image(image_id)["Id"])
        except docker.errors.ImageNotFound:
            continue
        except FOREIGN as exc:
            raise translate(exc, "inspect image") from exc
    return None


def load_image_archive(client: docker.DockerClient, data: bytes | IO[bytes], *, archive_sha256: str,
                       image_id: str, known_sha256: str | None = None, work_dir: Path | None = None,
                       store: LayerSource | None = None, partial: bool = False) -> str:
    """Load a buyer's archive after checking it (Rules 1 and 3); return the pinned image id.

    ``data``: the archive's bytes or a seekable file holding them; ``known_sha256``: the sha256 the
    caller computed of those bytes as they arrived (else recomputed); ``work_dir``: where the clean
    copy is written (the system's temporary directory by default). ``store``: the provider's layer
    store, which keeps the archive's layers once loaded (Rule 4); ``partial``: the buyer left out the
    layers the store holds (layer-aware shipping), so the archive's sha256 cannot be the agreed one and
    the image is checked by its id and every layer's diff id instead (sandbox.archive Rule 6).
    """
    pinned_image_id(image_id)
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    plan = inspect_archive(source, archive_sha256=known_sha256, store=store if partial else None)
    digests = plan.digests
    if not partial and digests.archive_sha256 != archive_sha256:
        raise ImageError("the image archive's sha256 is not the agreed one; refusing to load it",
                         expected=archive_sha256, actual=digests.archive_sha256)
    if image_id not in digests.image_ids():
        raise ImageError("the image archive does not hold the agreed image id; refusing to load it",
                         expected=image_id, actual=sorted(digests.image_ids()))
    if (present := local_image_id(client, frozenset({image_id}))) is not None:
        return present
    with tempfile.TemporaryFile(dir=work_dir, prefix="suanli-image-") as clean:
        try:
            write_clean_archive(source, plan, clean, store=store if partial else None)
            clean.seek(0)
        except OSError as exc:  # a full disk, a closed file
            raise ImageError(f"the image archive could not be copied for loading: {exc}",
                             fault=ENVIRONMENT) from exc
        _docker_load(client, clean)
    loaded = local_image_id(client, digests.image_ids())
    if loaded != image_id:
        raise ImageError("after loading, the engine does not report the agreed image id",
                         expected=image_id, actual=loaded)
    if store is not None:  # Rule 4: the next buyer of an image sharing these layers sends only the rest
        store_layers(source, plan, store)
    return loaded


def _docker_load(client: docker.DockerClient, clean: IO[bytes]) -> None:
    """`docker load` of a clean archive, streamed from its file; the engine's progress is read to
    the end, since docker-py reports a failed load only inside it."""
    try:
        for message in client.api.load_image(clean, quiet=True):
            if isinstance(message, dict) and (message.get("error") or message.get("errorDetail")):
                raise ImageError(f"docker load refused the image: {message.get('error')}"[:300])
    except FOREIGN as exc:
        raise translate(exc, "docker load") from exc


def ensure_demo_image(client: docker.DockerClient, busybox_path: str = DEFAULT_BUSYBOX) -> str:
    """Build (if needed) and load the demo image; return its pinned id."""
    data, digests = build_demo_archive(busybox_path)
    present = local_image_id(client, digests.image_ids())
    if present is not None:
        return present
    expected = digests.config_digest
    try:
        loaded = load_image_archive(client, data, archive_sha256=digests.archive_sha256, image_id=expected)
    except ImageError:
        if digests.manifest_digest is None:
            raise
        # A containerd image store names the image by its manifest digest instead.
        loaded = load_image_archive(client, data, archive_sha256=digests.archive_sha256,
                                    image_id=digests.manifest_digest)
    repository, tag = DEMO_TAG.rsplit(":", 1)
    try:  # the operator's own image: the one tag Suanli sets, explicitly (Rule 3)
        client.api.tag(loaded, repository, tag)
    except FOREIGN as exc:
        raise translate(exc, "tag the demo image") from exc
    return loaded


def image_env(client: docker.DockerClient, image_id: str) -> list[str]:
    """The image config's Env entries ("K=V"), read from the engine; ImageError if absent."""
    try:
        attrs = client.api.inspect_image(pinned_image_id(image_id))
    except FOREIGN as exc:
        raise translate(exc, f"inspect image {image_id}") from exc
    if attrs.get("Id") != image_id and image_id not in (attrs.get("RepoDigests") or []):
        raise ImageError("the engine resolved the image id to another image", expected=image_id,
                         actual=attrs.get("Id"))
    return list((attrs.get("Config") or {}).get("Env") or [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.images")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-demo", help="build and load the busybox demo image; print its id")
    build.add_argument("--busybox", default=DEFAULT_BUSYBOX, help="path of a static busybox")
    args = parser.parse_args(argv)
    try:
        print(ensure_demo_image(connect(), args.busybox))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
