"""The provider's image cache: images Suanli loaded for a buyer or pulled for one, tracked from their
arrival, advertised in the offer, collected least recently used first within a quota.

Rule 1: only an image that Suanli itself brought in (``source``: "loaded" from a buyer's archive, or
"pulled" from a registry, issue 19) is ever removed. The ledger (``buyer-images.json`` in the
provider's image folder) lists them; an image found on the engine before a load or a pull is the
operator's and is never entered. An entry that has gained a tag since is the operator's now: it leaves
the ledger and stays on the engine.
Rule 2: an image that a running or agreed job names is never removed; the engine itself refuses to
remove one that a container uses (that refusal is not an error: it is tried again next time).
Rule 3: the images in the ledger may take ``budget_bytes`` of the engine's disk. Over it, the least
recently used go first (``choose_evictions``, pure). A buyer who runs the same image again finds it
and uploads nothing; why LRU and not removal after each job is in docs/SANDBOX.md.
Rule 4: the ledger is bookkeeping. ``record_loaded``/``record_used`` never fail a paid job: a write the
disk refuses is logged and the job goes on (at worst an image is not collected, or collected early);
a write that happens is atomic and durable (own temporary file, fsync, rename). A ledger that cannot be
read (torn by hand, another format) is read as empty: its images become foreign and stay (Rule 1).
Rule 5 (issue 19): an entry is known by its ``digests``: the image id (config digest) always and, for a
pulled image, each manifest digest it was asked by (the one the buyer named, an index digest perhaps,
and the platform manifest actually pulled). ``held_digests`` lists them for the signed offer, most
recently used first, at most ``limit`` in all.
Rule 6: ``make_room`` evicts least recently used first until the cache plus the image to come fits its
quota (Rules 1-3 hold: an image in use or one outside the ledger is never removed); a pulled image is
removed by id, its RepoDigests with it. It answers False, evicting nothing, when even removing every
idle entry would not make room, and False when the engine refused a removal that was needed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from p2p.identity import write_atomically
from sandbox.engine import FOREIGN, translate
from sandbox.errors import SandboxError

log = logging.getLogger("suanli.sandbox.image_gc")

LEDGER_NAME = "buyer-images.json"
LOADED, PULLED = "loaded", "pulled"
DEFAULT_HELD_LIMIT = 32  # digests in the offer (Rule 5)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DEFAULT_BUDGET_BYTES = 10 << 30
_LOCK = threading.Lock()  # the provider's worker threads share one ledger file


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    size_bytes: int
    loaded_ms: int
    used_ms: int
    source: str = LOADED  # LOADED | PULLED (Rule 1)
    digests: tuple[str, ...] = ()  # the manifest digests it was asked by; the image id is implied (Rule 5)

    def names(self) -> tuple[str, ...]:
        """Every digest it is known by: the manifest digests first (what buyers name), then the image id."""
        return tuple(dict.fromkeys((*self.digests, self.image_id)))


def choose_evictions(images: Iterable[LoadedImage], in_use: frozenset[str], budget_bytes: int) -> list[str]:
    """The ids to remove so that the rest fit ``budget_bytes``: least recently used first, never one in use."""
    kept = sorted(images, key=lambda i: (i.used_ms, i.image_id))
    total = sum(i.size_bytes for i in kept)
    evict = []
    for image in kept:
        if total <= budget_bytes:
            break
        if image.image_id in in_use:
            continue
        evict.append(image.image_id)
        total -= image.size_bytes
    return evict


def _entry(image_id: str, v: Mapping[str, object]) -> LoadedImage:
    source = v.get("source", LOADED)
    digests = v.get("digests", [])
    if source not in (LOADED, PULLED) or not isinstance(digests, list) or not _DIGEST.fullmatch(image_id):
        raise ValueError(f"a malformed entry for {image_id[:19]!r}")
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in digests):
        raise ValueError(f"a malformed digest in the entry for {image_id[:19]}")
    return LoadedImage(image_id, _int(v["size_bytes"]), _int(v["loaded_ms"]), _int(v["used_ms"]), str(source),
                       tuple(digests))


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {str(value)[:40]!r}")
    return value


def _read(ledger: Path) -> dict[str, LoadedImage]:
    try:
        raw = json.loads(ledger.read_text())
        return {k: _entry(k, v) for k, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        log.warning("the buyer image ledger %s is unreadable (%s); starting a new one", ledger, exc)
        return {}


def _write(ledger: Path, images: Mapping[str, LoadedImage]) -> None:
    """Replace the ledger atomically and durably (``p2p.identity.write_atomically``: a temporary file of
    its own, so that two providers sharing a data dir, or a crash mid-write, never leave a torn or
    foreign one; fsynced before the rename, the folder after)."""
    data = json.dumps({k: {"size_bytes": v.size_bytes, "loaded_ms": v.loaded_ms, "used_ms": v.used_ms,
                           "source": v.source, "digests": list(v.digests)}
                       for k, v in images.items()}, sort_keys=True).encode()
    write_atomically(ledger, data)


def record_loaded(image_dir: Path, client: docker.DockerClient, image_id: str, now_ms: int) -> bool:
    """Enter an image that was just loaded for a buyer (Rule 1). Best effort (Rule 4): False, logged,
    when it cannot be entered."""
    return _record(image_dir, client, image_id, (), LOADED, now_ms)


def record_pulled(image_dir: Path, client: docker.DockerClient, image_id: str, digests: Iterable[str],
                  now_ms: int) -> bool:
    """Enter an image that was just pulled for a buyer, with the manifest digests it was asked by
    (Rules 1 and 5). Best effort (Rule 4): False, logged, when it cannot be entered."""
    return _record(image_dir, client, image_id, tuple(digests), PULLED, now_ms)


def _record(image_dir: Path, client: docker.DockerClient, image_id: str, digests: tuple[str, ...],
            source: str, now_ms: int) -> bool:
    try:
        bad = [d for d in (image_id, *digests) if not isinstance(d, str) or not _DIGEST.fullmatch(d)]
        if bad:
            raise ValueError(f"not a sha256 digest: {str(bad[0])[:80]!r}")
        size = int(client.api.inspect_image(image_id).get("Size") or 0)
        with _LOCK:
            images = _read(image_dir / LEDGER_NAME)
            old = images.get(image_id)
            if old is not None:  # loaded once, pulled now (or asked by another digest): one entry, all names
                digests = tuple(dict.fromkeys((*old.digests, *digests)))
                source = PULLED if PULLED in (old.source, source) else LOADED
            images[image_id] = LoadedImage(image_id, size, old.loaded_ms if old else now_ms, now_ms, source,
                                           tuple(d for d in digests if d != image_id))
            _write(image_dir / LEDGER_NAME, images)
        return True
    except (OSError, ValueError, TypeError, *FOREIGN) as exc:
        log.warning("image %s is loaded but not entered in the buyer image ledger (%s); it will not be "
                    "collected", image_id[:19], exc)
        return False


def record_used(image_dir: Path, image_id: str, now_ms: int) -> bool:
    """A job uses an image: if it is a buyer's, it becomes the most recently used. Best effort (Rule 4):
    False, logged, when the ledger cannot be written."""
    try:
        with _LOCK:
            images = _read(image_dir / LEDGER_NAME)
            if image_id in images:
                old = images[image_id]
                images[image_id] = LoadedImage(image_id, old.size_bytes, old.loaded_ms, now_ms, old.source,
                                               old.digests)
                _write(image_dir / LEDGER_NAME, images)
        return True
    except OSError as exc:
        log.warning("the use of image %s is not noted in the buyer image ledger (%s)", image_id[:19], exc)
        return False


def held_digests(image_dir: Path, limit: int = DEFAULT_HELD_LIMIT) -> tuple[str, ...]:
    """The digests the offer advertises (Rule 5): each entry's names, most recently used first, at most
    ``limit`` in all. The ledger as it stands; an image removed behind Suanli's back is dropped at the
    next collection."""
    with _LOCK:
        images = _read(image_dir / LEDGER_NAME)
    names: dict[str, None] = {}
    for image in sorted(images.values(), key=lambda i: (-i.used_ms, i.image_id)):
        for name in image.names():
            if len(names) >= limit:
                return tuple(names)
            names.setdefault(name, None)
    return tuple(names)


def _refresh(client: docker.DockerClient, images: dict[str, LoadedImage]) -> None:
    """Drop the entries the engine no longer holds, and those the operator tagged (Rule 1)."""
    for image_id in list(images):
        try:
            attrs = client.api.inspect_image(image_id)
        except docker.errors.ImageNotFound:
            del images[image_id]  # removed by someone else
            continue
        except FOREIGN as exc:
            raise translate(exc, "inspect a buyer image") from exc
        if attrs.get("RepoTags"):
            log.info("image %s gained a tag: the operator's now, no longer collected", image_id[:19])
            del images[image_id]


def _remove(client: docker.DockerClient, image_id: str) -> bool:
    """Remove one image by id (a pulled one's RepoDigests go with it); False when the engine refuses
    because a container uses it or another reference holds it (Rule 2: tried again next time)."""
    try:
        client.api.remove_image(image_id, force=False, noprune=False)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            log.info("image %s stays: %s", image_id[:19], exc.explanation or exc)
            return False
        raise translate(exc, "remove a buyer image") from exc
    except FOREIGN as exc:
        raise translate(exc, "remove a buyer image") from exc
    return True


def make_room(client: docker.DockerClient, image_dir: Path, need_bytes: int, in_use: frozenset[str],
              quota_bytes: int) -> bool:
    """Evict cached images, least recently used first, until the cache plus ``need_bytes`` fits
    ``quota_bytes`` (Rule 6); never one in ``in_use``, never one outside the ledger. False when it
    cannot fit (nothing is evicted when even every idle entry would not make room)."""
    room = quota_bytes - need_bytes
    if room < 0:
        return False
    with _LOCK:
        images = _read(image_dir / LEDGER_NAME)
        _refresh(client, images)
        pinned = sum(i.size_bytes for i in images.values() if i.image_id in in_use)
        if pinned > room:
            _save(image_dir, images)
            return False
        total = sum(i.size_bytes for i in images.values())
        for image in sorted(images.values(), key=lambda i: (i.used_ms, i.image_id)):
            if total <= room:
                break
            if image.image_id not in in_use and _remove(client, image.image_id):  # refused: the next one
                del images[image.image_id]
                total -= image.size_bytes
        _save(image_dir, images)
    if total > room:
        log.info("no room for %d bytes in the %d-byte image cache: %d bytes stay", need_bytes, quota_bytes, total)
    return total <= room


def _save(image_dir: Path, images: Mapping[str, LoadedImage]) -> None:
    try:
        _write(image_dir / LEDGER_NAME, images)
    except OSError as exc:
        raise SandboxError(f"the buyer image ledger cannot be written: {exc}") from exc


def collect_buyer_images(client: docker.DockerClient, image_dir: Path, in_use: frozenset[str],
                         budget_bytes: int = DEFAULT_BUDGET_BYTES) -> list[str]:
    """Remove buyer images over the budget (Rules 1-3); return the ids removed."""
    with _LOCK:
        images = _read(image_dir / LEDGER_NAME)
        _refresh(client, images)
        removed = []
        for image_id in choose_evictions(images.values(), in_use, budget_bytes):
            if _remove(client, image_id):
                del images[image_id]
                removed.append(image_id)
        _save(image_dir, images)
    if removed:
        log.info("removed %d buyer image(s) over the %d-byte budget", len(removed), budget_bytes)
    return removed

