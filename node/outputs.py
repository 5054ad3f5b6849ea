"""The buyer writes a provider's outputs tar into ``suanli run --output DIR``; the provider controls the tar.

Rule 1: nothing below DIR is followed. Every directory on the way to a file is opened relative to its
parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY`` (openat), so a symlink in DIR, whether the buyer's
own, planted by someone else, or raced in while we write, is refused and never followed. DIR itself is
the buyer's choice and is opened as given.
Rule 2: a file is created ``O_CREAT | O_EXCL | O_NOFOLLOW``; an existing name is never written through.
With ``force`` the new file is written under a temporary name and renamed over the old one: a symlink or
hard link at that name is replaced, its target never touched.
Rule 3: before the job, DIR must be missing or empty unless ``force`` (``check_output_dir``), so a paid
job's outputs are not refused at the end for a conflict the buyer could have seen at the start.
Rule 4: an entry that cannot be written safely is skipped with a reason and the rest are written (a
provider's one bad entry must not lose the outputs the buyer paid for): links, devices, fifos and sparse
files; absolute names, ``..`` and NUL; a component over 255 bytes, a path over 4,096 bytes or deeper
than 64 levels; a name given twice; a file where a directory must be; a symlink or a non-directory in
the way; an existing file without ``force``. The whole tar is refused only when it is unreadable or too
big: over ``max_files`` files, ``max_dirs`` directories, or members claiming more bytes than it holds.
Rule 5: files get mode 0644 (0755 when the owner could execute it in the tar), directories 0755, both
less the umask; owners, set-id bits and times from the tar are ignored.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from p2p.errors import SuanliError, UnusableInputError

MAX_FILES = 10_000
MAX_DIRS = 10_000
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_DEPTH = 64  # 2,047 levels cost 5.6 s of openat walks and a RecursionError in shutil.rmtree
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class WrittenOutputs:
    files: list[str] = field(default_factory=list)  # relative paths written, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name as the tar gave it, why)


class _Skip(Exception):
    """One entry is not written (Rule 4)."""


def check_output_dir(dest: Path, *, force: bool) -> None:
    """Rule 3: ``dest`` is missing or an empty directory, unless ``force``; SuanliError otherwise."""
    try:
        st = dest.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SuanliError(f"--output {dest}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise SuanliError(f"--output {dest}: exists and is not a directory")
    if not force and any(os.scandir(dest)):
        raise SuanliError(f"--output {dest}: not empty; the provider's outputs could replace its files. "
                          "Give a new or empty directory, or --force to let outputs replace files of the same name")


def split_name(name: str) -> tuple[str, ...]:
    """A tar member's name (``out/`` removed) as path components; _Skip when it could leave DIR (Rule 4)."""
    if "\0" in name:
        raise _Skip("a NUL in the name")
    if name.startswith("/"):
        raise _Skip("an absolute name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Skip("a '..' in the name")
    if any(len(p.encode(errors="surrogateescape")) > MAX_NAME_BYTES for p in parts):
        raise _Skip(f"a name component over {MAX_NAME_BYTES} bytes")
    if len("/".join(parts).encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        raise _Skip(f"a path over {MAX_PATH_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise _Skip(f"a path deeper than {MAX_DEPTH} levels")
    return parts


def _kind(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` is not a regular file or directory, or None when it is one."""
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hard link"
    if member.isdir():
        return None
    if not member.isfile():
        return "a device, fifo or other special file"
    if member.issparse() or any(k.startswith("GNU.sparse") for k in member.pax_headers):
        return "a sparse file"
    return None


@dataclass
class _Plan:
    files: dict[tuple[str, ...], tarfile.TarInfo] = field(default_factory=dict)
    dirs: set[tuple[str, ...]] = field(default_factory=set)


def _plan(tar: tarfile.TarFile, size: int, max_files: int, max_dirs: int, out: WrittenOutputs) -> _Plan:
    plan, claimed = _Plan(), 0
    for member in tar:
        name = member.name
        head, _, rest = name.partition("/")
        rel = rest if head == "out" else name  # get_archive("/io/out") names everything out/...
        try:
            why = _kind(member)
            if why is not None:
                raise _Skip(why)
            parts = split_name(rel)
            if not parts:
                continue  # out/ itself
            if member.isdir():
                plan.dirs.add(parts)
            elif parts in plan.files:
                raise _Skip("a name given twice; the first was kept")
            else:
                claimed += member.size
                if claimed > size:  # a plain tar is never smaller than its contents
                    raise UnusableInputError("the job's outputs claim more bytes than the archive holds",
                                             actual=claimed)
                plan.files[parts] = member
                if len(plan.files) > max_files:
                    raise UnusableInputError(f"the job's outputs hold more than {max_files} files; none written",
                                             expected=max_files)
        except _Skip as exc:
            out.skipped.append((name, str(exc)))
    for parts in list(plan.files):
        plan.dirs.update(parts[:i] for i in range(1, len(parts)))
    if len(plan.dirs) > max_dirs:
        raise UnusableInputError(f"the job's outputs need more than {max_dirs} directories; none written",
                                 expected=max_dirs)
    for parts in [p for p in plan.files if p in plan.dirs]:
        out.skipped.append(("/".join(parts), "a file where the outputs also need a directory"))
        del plan.files[parts]
    return plan


def _open_dir(root: int, parts: tuple[str, ...]) -> int:
    """A descriptor of ``root/parts``, made where missing, each step O_NOFOLLOW (Rule 1); _Skip when
    something is in the way."""
    fd = os.dup(root)
    walked: list[str] = []
    try:
        for part in parts:
            walked.append(part)
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # raced: the open below decides what it is
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
            raise _Skip(f"{'/'.join(walked)} in the way is a symlink or not a directory; not followed") from None
        raise
    return fd


def _copy_new(src: IO[bytes], parent: int, name: str, mode: int) -> None:
    """Create ``name`` (O_EXCL, Rule 2) and copy ``src`` into it; a copy that fails (ENOSPC, EIO)
    removes the file it created, so no partial file is left behind."""
    fd = os.open(name, _NEW_FILE_FLAGS, mode, dir_fd=parent)
    try:
        with os.fdopen(fd, "wb", closefd=True) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
    except BaseException:
        try:
            os.unlink(name, dir_fd=parent)
        except OSError:
            pass
        raise


def _write_file(tar: tarfile.TarFile, parent: int, name: str, member: tarfile.TarInfo, force: bool) -> None:
    """``member``'s bytes as ``name`` in the directory ``parent`` (Rule 2)."""
    mode = 0o755 if member.mode & 0o100 else 0o644
    src = tar.extractfile(member) or io.BytesIO()
    if not force:
        try:
            _copy_new(src, parent, name, mode)
        except FileExistsError:
            raise _Skip("exists; not replaced without --force") from None
        return
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise _Skip("a directory of that name exists")
    except FileNotFoundError:
        pass
    tmp = f".suanli-{secrets.token_hex(8)}.part"
    _copy_new(src, parent, tmp, mode)
    try:
        os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)  # replaces a link, never its target
    except OSError:
        os.unlink(tmp, dir_fd=parent)
        raise


def _write_all(tar: tarfile.TarFile, root: int, plan: _Plan, force: bool, out: WrittenOutputs) -> None:
    """Files in sorted order, so those of one directory come together and share one walk to it; then
    the directories no file needed (empty ones the tar named)."""
    held: tuple[tuple[str, ...], int] | None = None  # the last parent walked to, and its descriptor
    try:
        for parts, member in sorted(plan.files.items()):
            try:
                if held is None or held[0] != parts[:-1]:
                    if held is not None:
                        os.close(held[1])
                        held = None
                    held = (parts[:-1], _open_dir(root, parts[:-1]))
                _write_file(tar, held[1], parts[-1], member, force)
                out.files.append("/".join(parts))
            except _Skip as exc:
                out.skipped.append(("/".join(parts), str(exc)))
    finally:
        if held is not None:
            os.close(held[1])
    needed = {parts[:i] for parts in plan.files for i in range(1, len(parts))}
    for parts in sorted(plan.dirs - needed):
        try:
            os.close(_open_dir(root, parts))
        except _Skip as exc:
            out.skipped.append(("/".join(parts), str(exc)))


def write_outputs(data: bytes, dest: Path, *, force: bool = False, max_files: int = MAX_FILES,
                  max_dirs: int = MAX_DIRS) -> WrittenOutputs:
    """Write the outputs tar ``data`` under ``dest`` by Rules 1, 2, 4 and 5; what was written and skipped.

    UnusableInputError when the tar is unreadable or too big (found before anything is written);
    SuanliError when ``dest`` cannot be used or the disk refuses a write (the files written before it
    stay, the one being written is removed: never a partial file, never a ``.part`` left behind).
    """
    out = WrittenOutputs()
    if not data:
        return out
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            plan = _plan(tar, len(data), max_files, max_dirs, out)
            try:
                dest.mkdir(parents=True, exist_ok=True)
                root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise SuanliError(f"--output {dest}: {exc.strerror}") from exc
            try:
                _write_all(tar, root, plan, force, out)
            except OSError as exc:
                raise SuanliError(f"--output {dest}: writing the outputs failed: {exc.strerror}") from exc
            finally:
                os.close(root)
    except tarfile.TarError as exc:
        raise UnusableInputError(f"the job's outputs are not a readable tar: {exc}") from exc
    return out
