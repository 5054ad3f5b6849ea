"""The provider's layer store (issue 19): uncompressed image layers kept by diff id, so that a buyer who
ships an archive sends only the layers the provider lacks (layer-aware shipping, p2p.job_wire Rule 3).

Rule 1: content-addressed. A layer lives at ``<root>/sha256/<hex>``, where ``sha256:<hex>`` is its diff
id: the sha256 of the uncompressed layer tar, as the image config's ``rootfs.diff_ids`` lists it. ``add``
hashes the bytes while copying them and refuses a mismatch, so nothing is ever stored under a wrong name.
Rule 2: the store is not trusted either. A file can be damaged or changed on disk after it was added;
whoever copies a layer out of the store hashes it again (sandbox.archive.write_clean_archive) and a
mismatch refuses the archive.
Rule 3: crash-safe. A layer is written to a temporary file of its own under ``<root>/tmp``, fsynced, then
renamed into place: a crash leaves a whole layer or none. Temporary files an earlier crash left are
removed when the store is opened (after ``STALE_TEMP_S``, so that a second process's copy in flight
stays).
Rule 4: bounded. The layers together stay within ``quota_bytes``; ``add`` removes the least recently used
(the oldest modification time: ``open`` and ``add`` set it to now) until the new layer fits, and a layer
larger than the whole quota is not stored. A layer removed while a reader has it open stays readable to
that reader (POSIX), so eviction never tears a rebuild in progress.
Rule 5: bookkeeping never fails a job: ``add`` returns False when the disk refuses, logged; only a
mismatch (Rule 1) is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from p2p.errors import ENVIRONMENT
from sandbox.errors import ImageError

log = logging.getLogger("suanli.sandbox.layerstore")

STALE_TEMP_S = 3600  # Rule 3: a temporary file older than this is a crash's leftover
_COPY_BYTES = 1 << 20
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def _hex(diff_id: str) -> str:
    match = _DIGEST.fullmatch(diff_id) if isinstance(diff_id, str) else None
    if match is None:
        raise ImageError("a layer's diff id is not a sha256 digest", actual=repr(diff_id)[:100])
    return match.group(1)


class LayerStore:
    """Uncompressed layers by diff id within a quota (Rules 1-5). Safe to share between threads."""

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._layers = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._last_ns = 0
        self._layers.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()

    def path(self, diff_id: str) -> Path:
        return self._layers / _hex(diff_id)

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_file()

    def held(self, diff_ids: Iterable[str]) -> tuple[str, ...]:
        """Those of ``diff_ids`` the store holds, in the given order, each once."""
        return tuple(d for d in dict.fromkeys(diff_ids) if self.has(d))

    def size(self, diff_id: str) -> int:
        """The stored layer's size in bytes; ImageError when the store does not hold it."""
        try:
            return self.path(diff_id).stat().st_size
        except FileNotFoundError as exc:
            raise ImageError("the layer store does not hold a layer", actual=diff_id, reason="layer_missing",
                             fault=ENVIRONMENT) from exc

    def open(self, diff_id: str) -> IO[bytes]:
        """The stored layer for reading (the caller closes it and hashes what it reads, Rule 2); it becomes
        the most recently used (Rule 4). ImageError when the store does not hold it."""
        path = self.path(diff_id)
        try:
            f = path.open("rb")
        except FileNotFoundError as exc:
            raise ImageError("the layer store does not hold a layer", actual=diff_id, reason="layer_missing",
                             fault=ENVIRONMENT) from exc
        self._touch(path)
        return f

    def add(self, diff_id: str, src: IO[bytes], size: int) -> bool:
        """Copy ``size`` bytes from ``src`` into the store as layer ``diff_id``, hashing them (Rule 1).

        True when the store holds the layer afterwards; False when it is larger than the quota or the disk
        refused (Rule 5, logged). ImageError when the bytes are not that layer (nothing is stored)."""
        name = _hex(diff_id)
        final = self._layers / name
        if final.is_file():
            self._touch(final)
            return True
        if size < 0 or size > self.quota_bytes:
            return False
        temp = self._tmp / f"{name}.{uuid.uuid4().hex}"
        try:
            try:
                self._copy(src, temp, size, diff_id)
            except OSError as exc:
                log.warning("layer %s is not kept in the layer store (%s)", diff_id[:19], exc)
                return False
            with self._lock:
                self._evict(self.quota_bytes - size, keep=name)
                os.replace(temp, final)
            self._touch(final)
            return True
        except OSError as exc:
            log.warning("layer %s is not kept in the layer store (%s)", diff_id[:19], exc)
            return False
        finally:
            temp.unlink(missing_ok=True)

    def discard(self, diff_id: str) -> None:
        """Forget a layer (one found damaged, Rule 2); nothing when the store does not hold it."""
        try:
            self.path(diff_id).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("layer %s could not be removed from the layer store (%s)", diff_id[:19], exc)

    def usage_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    # -- inside -------------------------------------------------------------------------------------

    def _copy(self, src: IO[bytes], temp: Path, size: int, diff_id: str) -> None:
        digest = hashlib.sha256()
        left = size
        with temp.open("xb") as out:
            while left > 0:
                chunk = src.read(min(_COPY_BYTES, left))
                if not chunk:
                    raise ImageError("a layer for the layer store ended early", expected=size, actual=size - left)
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            actual = "sha256:" + digest.hexdigest()
            if actual != diff_id:
                raise ImageError("a layer does not match its diff id; not stored", expected=diff_id, actual=actual)
            out.flush()
            os.fsync(out.fileno())

    def _entries(self) -> list[tuple[float, str, int]]:
        """(last used, name, size) of every stored layer."""
        entries = []
        for entry in os.scandir(self._layers):
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, entry.name, stat.st_size))
        return entries

    def _evict(self, room_bytes: int, keep: str) -> None:
        """Remove the least recently used layers until the store holds at most ``room_bytes`` (Rule 4)."""
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, name, size in entries:
            if total <= room_bytes:
                break
            if name == keep:
                continue
            (self._layers / name).unlink(missing_ok=True)
            total -= size
            log.info("layer sha256:%s left the layer store (least recently used)", name[:12])

    def _touch(self, path: Path) -> None:
        """Mark a layer as used now: a modification time strictly after the last one this store set, so that
        two uses within the clock's resolution still order (Rule 4)."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1000)
            stamp = self._last_ns
        try:
            os.utime(path, ns=(stamp, stamp))
        except OSError:  # removed meanwhile, or a read-only store: the order is only a hint
            pass

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for entry in os.scandir(self._tmp):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S:
                    os.unlink(entry.path)
            except OSError:
                continue
