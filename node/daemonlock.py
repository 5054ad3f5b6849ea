"""One provider daemon per data directory, and per key on one Docker engine (M6).

Rule 1: a daemon holds an exclusive ``flock`` on ``<data_dir>/provider.lock`` for its whole life; a
second daemon on the same data directory is refused with one line. The kernel drops the lock when the
process dies, however it dies, so a crash never leaves a stale lock.
Rule 2: everything a daemon creates on the engine is labelled with that lock file's path
(``suanli.owner``), and each daemon keeps one marker volume so labelled. A daemon is alive exactly
while its lock file is locked: ``lock_alive`` asks the kernel, with no pid files and no heartbeats.
Two data directories with one key on one engine are therefore told apart, and the second daemon
refuses to start while the first is alive (node.provider); after a crash the next start reaps.
Rule 3: a daemon also holds, for its whole life, a lock named after its key in a host-wide directory
(``take_key_lock``: /run/lock, else the temporary directory). Two daemons with one key that start at
the same moment from different data directories cannot both pass the engine-level check (each would see
no other marker yet); the kernel lets exactly one take this lock, and the other is refused with one line.
Rule 4: ``lock_alive`` reads a path that came from a Docker label, which anyone who can create a volume
can set: it never blocks (O_NONBLOCK, so a FIFO opens at once), never follows a symlink, and only a
regular file can be a daemon's lock; anything else is taken as alive (never reaped, never waited on).
Limit: the check needs the lock file's path to be reachable, i.e. the daemons share one host (a remote
engine shared by two hosts is not covered; docs/SANDBOX.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from p2p.errors import ConfigError

LOCK_NAME = "provider.lock"
KEY_LOCK_DIRS = (Path("/run/lock"), Path(tempfile.gettempdir()))


class DaemonLock:
    """The held lock; ``path`` is what labels say, ``close`` releases it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @property
    def label(self) -> str:
        return str(self.path)

    def marker_volume(self) -> str:
        """The name of this daemon's marker volume on the engine (Rule 2)."""
        return "suanli-daemon-" + hashlib.sha256(self.label.encode()).hexdigest()[:16]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def take_daemon_lock(data_dir: Path) -> DaemonLock:
    """Lock ``data_dir`` for this process, or ConfigError naming the daemon that holds it (Rule 1)."""
    path = (data_dir / LOCK_NAME).resolve()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the daemon lock: {exc.strerror}", path=str(path)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"another suanli provider (pid {holder}) is already running with data dir {data_dir}; "
                          "stop it first, or give this one its own data_dir and key", path=str(path),
                          reason="already_running") from None
    except OSError as exc:
        os.close(fd)
        raise ConfigError(f"{path}: cannot lock: {exc.strerror}", path=str(path)) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DaemonLock(path, fd)


class KeyLock:
    """The host-wide lock of one key (Rule 3); ``close`` deletes the file while still holding it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink()  # under the lock: a daemon that opened it re-checks the inode
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def _key_lock_dir() -> Path:
    return next((d for d in KEY_LOCK_DIRS if d.is_dir() and os.access(d, os.W_OK | os.X_OK)), KEY_LOCK_DIRS[-1])


def take_key_lock(peer_id: str, lock_dir: Path | None = None) -> KeyLock:
    """Lock ``peer_id`` on this host for this process, or ConfigError (``already_running``) (Rule 3)."""
    directory = lock_dir if lock_dir is not None else _key_lock_dir()
    path = directory / ("suanli-key-" + hashlib.sha256(peer_id.encode()).hexdigest()[:24] + ".lock")
    for _ in range(8):  # bounded: each retry means another daemon released and deleted it meanwhile
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot open the key lock: {exc.strerror}", path=str(path)) from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{path} is not a regular file; remove it", path=str(path))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"another suanli provider with this key ({peer_id}) is running on this host "
                              f"(pid {holder}); stop it, or give this one its own key", path=str(path),
                              reason="already_running") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return KeyLock(path, fd)
        os.close(fd)  # we locked a file its holder had just deleted: take the new one
    raise ConfigError(f"{path}: the key lock keeps changing; is another provider with this key restarting?",
                      path=str(path), reason="already_running")


def lock_alive(path: str) -> bool:
    """True while some process holds ``path`` locked (Rule 2); a missing file is a dead daemon.

    A path we cannot open, or that is not a regular file, is taken as alive: never reap what we cannot
    prove abandoned, and never block on what a label names (Rule 4).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False
