"""A job's /io as a filesystem of its own, with a size the kernel enforces (blocking shell).

Each job with a disk gets a file ``<disk_dir>/<volume name>.ext4``: space reserved with
``posix_fallocate`` (the host's free space drops by the agreed size at once, and never by more), an
ext4 made with ``mkfs.ext4`` (no journal, no reserved blocks, root owned by 65534), attached to a loop
device, and handed to Docker as a ``local`` volume with ``type=ext4,device=/dev/loopN``: dockerd
mounts it when the container starts. A job that fills it gets ENOSPC; the host does not notice.
docs/SANDBOX.md says why this and not a tmpfs volume or overlay quotas.

Rule 1: everything here is undone by ``release_disk`` (detach every loop device backed by the file,
then unlink it), which the runner calls in its shielded ``finally`` and the reaper after a crash.
Rule 2: attaching a loop device needs CAP_SYS_ADMIN (the provider daemon runs as root), losetup and
mkfs.ext4; without them the provider refuses to start (``disk_support_problem``, node.provider), and a
library caller's job is refused with one line, never run without a limit.
Rule 3: free disk is measured here, in the worker thread that reserves the space, and checked with the
planner's reserve (sandbox.plan.check_disk_room) for both job disks and image uploads.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.plan import DISK_SUFFIX, check_disk_room

SUFFIX = DISK_SUFFIX  # one definition (sandbox.plan); this name is kept for the reaper
DISK_TOOLS = ("losetup", "mkfs.ext4")
_SYS_BLOCK = Path("/sys/block")


def disk_room(directory: str | os.PathLike[str]) -> tuple[int, int]:
    """(free bytes an unprivileged writer may still use, size in bytes) of the filesystem that holds
    ``directory`` (or would hold it: the nearest existing parent). Blocking: call it from a thread."""
    path = Path(directory)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``directory`` (``disk_room``)."""
    return disk_room(directory)[0]


def check_room(directory: str | os.PathLike[str], need_bytes: int, *, what: str) -> None:
    """SandboxError (``disk_full``) unless ``need_bytes`` fit under ``directory`` with the reserve left
    (Rule 3). Blocking: call it from a thread."""
    free, size = disk_room(directory)
    check_disk_room(need_bytes, free, size, what=what)


def find_tool(name: str) -> str | None:
    """The path of a system tool, looking in the sbin directories too (root's PATH has them; others' not)."""
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)),
                                      None)


def disk_support_problem(euid: int | None = None, find: Callable[[str], str | None] = find_tool) -> str | None:
    """Why job disks cannot work on this machine, in one line, or None (Rule 2). ``euid`` and ``find``
    are the seams a test passes in (CI runs as root with the tools installed)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return ("the provider daemon must run as root: each job's /io is a loop-mounted filesystem of the agreed "
                "size, and only root may attach loop devices (docs/SANDBOX.md, \"Disk\")")
    missing = [name for name in DISK_TOOLS if find(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: job disks need them (apt-get install e2fsprogs mount; "
                "docs/SANDBOX.md, \"Disk\")")
    return None


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise SandboxError(f"{name} is not installed; job disks need it (apt-get install e2fsprogs mount)",
                           reason="no_disk_tools")
    return path


def _run(args: list[str], what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"{what} failed: {exc}", reason="disk_setup") from exc
    if done.returncode != 0:
        raise SandboxError(f"{what} failed: {done.stderr.strip()[:300]}", reason="disk_setup")
    return done.stdout.strip()


def make_disk(path: Path, size_bytes: int) -> str:
    """Reserve, format and attach the job's disk file; return the loop device (``/dev/loopN``)."""
    if os.geteuid() != 0:
        raise SandboxError("job disks need loop devices, which only root may attach: run the provider daemon "
                           "as root (docs/SANDBOX.md)", reason="disk_needs_root")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_room(path.parent, size_bytes, what="the job's disk")  # Rule 3, just before the space is taken
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise SandboxError(f"cannot create the job's disk file {path}: {exc.strerror}", reason="disk_setup") from exc
    try:
        try:
            os.posix_fallocate(fd, 0, size_bytes)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SandboxError(f"not enough free disk for the job's {size_bytes >> 20} MiB",
                                   reason="disk_full", expected=size_bytes, actual=free_bytes(path.parent)) from exc
            raise SandboxError(f"cannot reserve the job's disk: {exc.strerror}", reason="disk_setup") from exc
        finally:
            os.close(fd)
        _run([_tool("mkfs.ext4"), "-q", "-F", "-m", "0", "-O", "^has_journal",
              "-E", "root_owner=65534:65534,nodiscard,lazy_itable_init=1", str(path)], "mkfs.ext4")
        return _run([_tool("losetup"), "--find", "--show", str(path)], "losetup")
    except BaseException:
        release_disk(path)
        raise


def loop_devices(path: Path) -> list[str]:
    """The loop devices whose backing file is ``path`` (from sysfs, so no tool and no parsing)."""
    target = str(path.resolve()) if path.exists() else str(path)
    found = []
    for backing in _SYS_BLOCK.glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue
        if name.removesuffix(" (deleted)") == target:
            found.append("/dev/" + backing.parent.parent.name)
    return found


def release_disk(path: Path) -> None:
    """Detach every loop device backed by ``path`` and delete it (Rule 1); missing pieces are fine."""
    for device in loop_devices(path):
        try:
            _run([_tool("losetup"), "-d", device], f"losetup -d {device}")
        except SandboxError:
            pass  # a device still mounted is detached by the kernel when dockerd unmounts it (autoclear)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SandboxError(f"cannot delete the job's disk file {path}: {exc.strerror}") from exc


def disk_files(disk_dir: Path) -> list[Path]:
    """Every job disk file in ``disk_dir`` (for the reaper)."""
    try:
        return sorted(p for p in disk_dir.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
