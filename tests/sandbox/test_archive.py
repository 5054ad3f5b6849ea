"""Image archives: deterministic bytes, recomputed digests, refusals; and the /io tars (pure)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from p2p.errors import ImageError, UnusableInputError
from sandbox.archive import LayerEntry, image_archive, layer_tar, read_digests, sha256_digest
from sandbox.images import build_demo_archive, is_static_elf
from sandbox.jobio import LineSplitter, input_tar, output_entry_problem, parse_log_line, read_output_tar, safe_relpath

ENTRIES = [LayerEntry("bin", "dir"), LayerEntry("bin/x", "file", 0o755, data=b"x"),
           LayerEntry("bin/y", "symlink", target="x"), LayerEntry("io", "dir", uid=65534, gid=65534)]


def test_archive_is_deterministic_and_digests_recompute():
    a, da = image_archive(layer_tar(ENTRIES), {"User": "65534:65534"}, architecture="amd64")
    b, db = image_archive(layer_tar(list(reversed(ENTRIES))), {"User": "65534:65534"}, architecture="amd64")
    assert a == b and da == db
    back = read_digests(a)
    assert back.archive_sha256 == sha256_digest(a) == da.archive_sha256
    assert back.config_digest == da.config_digest and back.manifest_digest == da.manifest_digest
    assert back.image_ids() == {da.config_digest, da.manifest_digest}
    assert back.config["config"]["User"] == "65534:65534"


def test_archive_carries_both_layouts():
    data, digests = image_archive(layer_tar(ENTRIES), {}, architecture="amd64", repo_tag="x/y:z")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = set(tar.getnames())
        legacy = json.load(tar.extractfile("manifest.json"))
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert legacy[0]["Config"] == "blobs/sha256/" + digests.config_digest[7:]
    assert legacy[0]["RepoTags"] == ["x/y:z"]
    assert all(m.mtime == 0 for m in tarfile.open(fileobj=io.BytesIO(data)).getmembers())


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("data", [
    b"not a tar at all",
    _tar({"hello.txt": b"hi"}),
    _tar({"manifest.json": b"[]"}),
    _tar({"manifest.json": b'[{"Config": "missing.json", "Layers": []}]'}),
    _tar({"index.json": json.dumps({"manifests": [{"digest": "sha256:" + "0" * 64}]}).encode()}),
])
def test_unreadable_archives_refused(data):
    with pytest.raises(ImageError):
        read_digests(data)


def test_tampered_manifest_blob_refused():
    data, digests = image_archive(layer_tar(ENTRIES), {}, architecture="amd64")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    files["blobs/sha256/" + digests.manifest_digest[7:]] += b" "
    with pytest.raises(ImageError):
        read_digests(_tar(files))


def test_demo_archive_is_reproducible():
    a, da = build_demo_archive()
    b, db = build_demo_archive()
    assert a == b and da.config_digest == db.config_digest
    assert da.config["config"]["User"] == "65534:65534" and da.config["config"]["WorkingDir"] == "/io"


def test_missing_busybox_is_one_clear_line(tmp_path):
    with pytest.raises(ImageError) as info:
        build_demo_archive(str(tmp_path / "nope"))
    assert "busybox-static" in str(info.value) and "\n" not in str(info.value)
    dynamic = tmp_path / "dyn"
    dynamic.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ImageError, match="statically linked"):
        build_demo_archive(str(dynamic))


def test_static_elf_check():
    assert is_static_elf(open("/bin/busybox", "rb").read())
    assert not is_static_elf(open("/bin/ls", "rb").read())  # dynamically linked


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "", ".", ".."])
def test_paths_must_stay_inside(name):
    with pytest.raises(UnusableInputError):
        safe_relpath(name)


def test_input_tar_owns_in_and_out_as_nobody():
    data = input_tar({"a/b.txt": b"1", "c": b"22"})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"in", "out", "in/a", "in/a/b.txt", "in/c"}
    assert all(m.uid == m.gid == 65534 for m in members.values())


def test_output_tar_skips_links_and_devices_and_keeps_the_rest():
    """L4: one symlink in /io/out used to lose every output; now it is skipped, by name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("out/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
        fifo = tarfile.TarInfo("out/pipe")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        good = tarfile.TarInfo("out/r.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
    assert read_output_tar(buf.getvalue()) == {"r.txt": b"ok"}
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        problems = {m.name: output_entry_problem(m) for m in tar.getmembers()}
    assert problems == {"out/evil": "a symbolic link (to '/etc/shadow')", "out/pipe": "a device or fifo",
                        "out/r.txt": None}


@pytest.mark.parametrize("chunks, lines", [
    ([b"a\nb", b"c\n"], [b"a", b"bc"]),
    ([b"\n\n"], [b"", b""]),
    ([b"x" * 10], [b"xxxx", b"xxxx"]),  # max_line 4: long lines are cut, the rest waits
])
def test_line_splitter(chunks, lines):
    splitter = LineSplitter(max_line=4)
    assert [line for c in chunks for line in splitter.feed(c)] == lines


def test_log_line_parsing():
    line = parse_log_line("stderr", b"2026-11-26T07:42:27.067076400Z hello world")
    assert (line.stream, line.timestamp, line.text) == ("stderr", "2026-11-26T07:42:27.067076400Z",
                                                       "hello world")
    assert parse_log_line("stdout", b"no-stamp").text == "no-stamp"
