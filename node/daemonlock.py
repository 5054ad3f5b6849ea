"""One provider daemon per data directory, and per key on one Docker engine (M6).

Rule 1: a daemon holds an exclusive ``flock`` on ``<data_dir>/provider.lock`` for its whole life; a
second daemon on the same data directory is refused with one line. The kernel drops the lock when the
process dies, however it dies, so a crash never leaves a stale lock.
Rule 2: everything a daemon creates on the engine is labelled with that lock file's path
(``suanli.owner``), and each daemon keeps one marker volume so labelled. A daemon is alive exactly
while its lock file is locked: ``lock_alive`` asks the kernel, with no pid files and no heartbeats.
Two data directories with one key on one engine are therefore told apart, and the second daemon
refuses to start while the first is alive (node.provider); after a crash the next start reaps.
Limit: the check needs the lock file's path to be reachable, i.e. the daemons share one host (a remote
engine shared by two hosts is not covered; docs/SANDBOX.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from p2p.errors import ConfigError

LOCK_NAME = "provider.lock"


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


def lock_alive(path: str) -> bool:
    """True while some process holds ``path`` locked (Rule 2); a missing file is a dead daemon.

    A file we cannot open is taken as alive: never reap what we cannot prove abandoned.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False
