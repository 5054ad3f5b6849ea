"""M4: a hostile provider's outputs tar against the buyer's --output directory (node.outputs).

Real files in a temporary directory; the tars are built here the way a provider could build them.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from node.outputs import WrittenOutputs, check_output_dir, write_outputs
from p2p.errors import SuanliError, UnusableInputError


def _tar(*entries: tuple) -> bytes:
    """Entries: ("file", name, data[, mode]) | ("dir", name) | ("sym", name, target) | ("hard", name, target)
    | ("fifo", name) | ("chr", name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if rest:
                info.linkname = rest[0]
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, outside): the --output directory and a directory a hostile tar must never reach."""
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious")
    return dest, outside


def _tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return out


def test_plain_outputs_are_written_with_safe_modes(place):
    dest, _ = place
    data = _tar(("dir", "out"), ("dir", "out/sub"), ("file", "out/a.txt", b"A", 0o4777),
                ("file", "out/sub/run.sh", b"#!/bin/sh", 0o755), ("file", "out/deep/er/b.txt", b"B"))
    written = write_outputs(data, dest)
    assert written == WrittenOutputs(files=["a.txt", "deep/er/b.txt", "sub/run.sh"], skipped=[])
    assert (dest / "deep/er/b.txt").read_bytes() == b"B"
    umask = os.umask(0)
    os.umask(umask)
    assert (dest / "a.txt").stat().st_mode & 0o7777 == 0o755 & ~umask  # no set-uid from the tar
    assert (dest / "sub/run.sh").stat().st_mode & 0o7777 == 0o755 & ~umask


def test_a_symlinked_directory_in_the_destination_is_never_followed(place):
    dest, outside = place
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    data = _tar(("file", "out/sub/victim.txt", b"pwned"), ("file", "out/sub/new.txt", b"pwned"),
                ("file", "out/fine.txt", b"ok"))
    for force in (False, True):
        written = write_outputs(data, dest, force=force)
        assert written.files == ["fine.txt"]  # the second time, --force replaces it
        assert {n for n, _ in written.skipped} == {"sub/victim.txt", "sub/new.txt"}
        assert all("symlink" in why for _, why in written.skipped)
        assert _tree(outside) == {"victim.txt": b"precious"}
    assert (dest / "sub").is_symlink()


def test_an_existing_file_is_not_overwritten_without_force(place):
    dest, outside = place
    (dest / "victim.txt").write_bytes(b"mine")
    (dest / "link.txt").symlink_to(outside / "victim.txt")
    (dest / "hard.txt").hardlink_to(outside / "victim.txt")
    data = _tar(("file", "out/victim.txt", b"theirs"), ("file", "out/link.txt", b"theirs"),
                ("file", "out/hard.txt", b"theirs"))
    with pytest.raises(SuanliError, match="not empty.*--force"):
        check_output_dir(dest, force=False)
    written = write_outputs(data, dest)  # a directory that filled up after the check: each name is refused
    assert written.files == [] and len(written.skipped) == 3
    assert all("not replaced without --force" in why for _, why in written.skipped)
    assert (dest / "victim.txt").read_bytes() == b"mine" and (outside / "victim.txt").read_bytes() == b"precious"

    check_output_dir(dest, force=True)
    written = write_outputs(data, dest, force=True)  # replaced by rename: a link's target is never written
    assert written.files == ["hard.txt", "link.txt", "victim.txt"] and written.skipped == []
    assert all((dest / n).read_bytes() == b"theirs" and not (dest / n).is_symlink() for n in written.files)
    assert (outside / "victim.txt").read_bytes() == b"precious"
    assert not [p for p in dest.iterdir() if p.name.startswith(".suanli-")]


def test_a_tar_cannot_write_through_a_symlink_it_creates(place):
    dest, outside = place
    data = _tar(("sym", "out/esc", str(outside)), ("file", "out/esc/victim.txt", b"pwned"),
                ("sym", "out/rel", "../outside"), ("file", "out/rel/new.txt", b"pwned"),
                ("hard", "out/h", str(outside / "victim.txt")), ("sym", "out/v", str(outside / "victim.txt")),
                ("file", "out/v", b"pwned"))
    written = write_outputs(data, dest)
    skipped = dict(written.skipped)
    assert skipped["out/esc"] == "a symlink" and skipped["out/h"] == "a hard link" and skipped["out/rel"] == "a symlink"
    assert written.files == ["esc/victim.txt", "rel/new.txt", "v"]  # plain folders and files inside dest
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert _tree(outside) == {"victim.txt": b"precious"}


@pytest.mark.parametrize("name, why", [
    ("/etc/pwned", "absolute"), ("out//tmp/pwned", "absolute"), ("out/../pwned", "'..'"),
    ("../pwned", "'..'"), ("out/a/../../pwned", "'..'"),
    ("out/" + "x" * 256, "over 255 bytes"), ("out/" + "d/" * 2100 + "f", "over 4096 bytes"),
    ("out/" + "d/" * 64 + "f", "deeper than 64"),  # 2,000 levels took 5.6 s and broke shutil.rmtree
])
def test_names_that_leave_the_destination_are_skipped(place, name, why):
    dest, outside = place
    written = write_outputs(_tar(("file", name, b"pwned"), ("file", "out/ok", b"ok")), dest)
    assert written.files == ["ok"] and len(written.skipped) == 1 and why in written.skipped[0][1]
    assert _tree(dest) == {"ok": b"ok"} and _tree(outside) == {"victim.txt": b"precious"}
    assert not (dest.parent / "pwned").exists()


def test_sixty_four_levels_are_written():
    from node.outputs import split_name

    assert len(split_name("/".join(["d"] * 63) + "/f")) == 64


def test_special_files_duplicates_and_file_directory_clashes_are_skipped(place):
    dest, _ = place
    data = _tar(("fifo", "out/fifo"), ("chr", "out/null"), ("file", "out/twice", b"1"), ("file", "out/twice", b"2"),
                ("file", "out/both", b"file"), ("file", "out/both/inner", b"x"))
    written = write_outputs(data, dest)
    assert written.files == ["both/inner", "twice"] and (dest / "twice").read_bytes() == b"1"
    assert [n for n, _ in written.skipped] == ["out/fifo", "out/null", "out/twice", "both"]
    assert _tree(dest) == {"both": "dir", "both/inner": b"x", "twice": b"1"}


def test_too_many_files_or_directories_or_a_bomb_write_nothing(place):
    dest, _ = place
    many = _tar(*[("file", f"out/f{i}", b"") for i in range(11)])
    with pytest.raises(UnusableInputError, match="more than 10 files"):
        write_outputs(many, dest, max_files=10)
    dirs = _tar(*[("file", f"out/d{i}/f", b"") for i in range(11)])
    with pytest.raises(UnusableInputError, match="more than 10 directories"):
        write_outputs(dirs, dest, max_dirs=10)
    with pytest.raises(UnusableInputError, match="not a readable tar"):
        write_outputs(b"\x00garbage" * 200, dest)
    bomb = bytearray(_tar(("file", "out/big", b"x" * 512)))
    info = tarfile.TarInfo("out/big")
    info.size = 10**12
    bomb[:512] = info.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(UnusableInputError):
        write_outputs(bytes(bomb), dest)
    assert list(dest.iterdir()) == []


def test_split_name_refuses_nul():  # tarfile cuts names at NUL; the check does not rely on it
    from node.outputs import _Skip, split_name

    with pytest.raises(_Skip, match="NUL"):
        split_name("a\0b")
    assert split_name("./a//b/") == ("a", "b")


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new", force=False)
    check_output_dir(tmp_path, force=False)  # empty
    (tmp_path / "f").write_text("x")
    with pytest.raises(SuanliError, match="not a directory"):
        check_output_dir(tmp_path / "f", force=True)
    with pytest.raises(SuanliError, match="not empty"):
        check_output_dir(tmp_path, force=False)
    check_output_dir(tmp_path, force=True)


_REFUSING_DISK = r"""
import resource, signal, sys
from pathlib import Path
from node.outputs import write_outputs
from p2p.errors import SuanliError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_outputs(Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]), force=sys.argv[3] == "force")
except SuanliError as exc:
    print(exc)
    sys.exit(3)
"""


@pytest.mark.parametrize("force", ["force", "no-force"])
def test_a_write_the_disk_refuses_leaves_no_partial_file(tmp_path, force):
    """A disk that refuses a write mid-file (here RLIMIT_FSIZE in a child process): a clear error, the
    files written before it stay, and neither the half-written file nor a ``.part`` is left."""
    import subprocess
    import sys

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "big.bin").write_bytes(b"old")  # with force, the old file must survive a failed replace
    archive = tmp_path / "out.tar"
    archive.write_bytes(_tar(("file", "out/a.txt", b"small"), ("file", "out/big.bin", b"x" * (3 << 20)),
                             ("file", "out/c/big2.bin", b"y" * (3 << 20))))
    proc = subprocess.run([sys.executable, "-c", _REFUSING_DISK, str(archive), str(dest), force],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "writing the outputs failed" in proc.stdout
    names = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert not [n for n in names if n.endswith(".part")]
    assert (dest / "a.txt").read_bytes() == b"small"
    assert (dest / "big.bin").read_bytes() == b"old"  # never replaced by a partial copy
    assert not (dest / "c" / "big2.bin").exists()
