"""A node's evidence files are its owner's alone (settlement.store Rule 4; node.paths, L3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from settlement.errors import StoreError


def make_private(path: Path) -> None:
    """Rule 4: a database opened for writing, and its -wal, -shm and -journal, are mode 0600, and a
    directory created for it is 0700, whatever the umask: a buyer's proposals hold its ``--env`` values,
    and evidence is nobody else's business. A wider file of ours is narrowed; sqlite gives the files it
    creates beside it the database's own mode. StoreError when the file cannot be made."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            try:
                st = os.lstat(side)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(side, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}", path=str(path)) from exc
