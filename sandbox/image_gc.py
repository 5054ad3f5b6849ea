"""Images loaded for buyers: tracked from their load, collected least recently used first.

Rule 1: only an image that Suanli itself loaded for a buyer is ever removed. The ledger
(``buyer-images.json`` in the provider's image folder) lists them; an image found on the engine
before a load is the operator's and is never entered. An entry that has gained a tag since is the
operator's now: it leaves the ledger and stays on the engine.
Rule 2: an image that a running or agreed job names is never removed; the engine itself refuses to
remove one that a container uses (that refusal is not an error: it is tried again next time).
Rule 3: the images in the ledger may take ``budget_bytes`` of the engine's disk. Over it, the least
recently used go first (``choose_evictions``, pure). A buyer who runs the same image again finds it
and uploads nothing; why LRU and not removal after each job is in docs/SANDBOX.md.
Rule 4: the ledger is bookkeeping. ``record_loaded``/``record_used`` never fail a paid job: a write the
disk refuses is logged and the job goes on (at worst an image is not collected, or collected early);
a write that happens is atomic and durable (own temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import logging
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
DEFAULT_BUDGET_BYTES = 10 << 30
_LOCK = threading.Lock()  # the provider's worker threads share one ledger file


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    size_bytes: int
    loaded_ms: int
    used_ms: int


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


def _read(ledger: Path) -> dict[str, LoadedImage]:
    try:
        raw = json.loads(ledger.read_text())
        return {k: LoadedImage(k, int(v["size_bytes"]), int(v["loaded_ms"]), int(v["used_ms"]))
                for k, v in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("the buyer image ledger %s is unreadable (%s); starting a new one", ledger, exc)
        return {}


def _write(ledger: Path, images: Mapping[str, LoadedImage]) -> None:
    """Replace the ledger atomically and durably (``p2p.identity.write_atomically``: a temporary file of
    its own, so that two providers sharing a data dir, or a crash mid-write, never leave a torn or
    foreign one; fsynced before the rename, the folder after)."""
    data = json.dumps({k: {"size_bytes": v.size_bytes, "loaded_ms": v.loaded_ms, "used_ms": v.used_ms}
                       for k, v in images.items()}, sort_keys=True).encode()
    write_atomically(ledger, data)


def record_loaded(image_dir: Path, client: docker.DockerClient, image_id: str, now_ms: int) -> bool:
    """Enter an image that was just loaded for a buyer (Rule 1). Best effort (Rule 4): False, logged,
    when it cannot be entered."""
    try:
        size = int(client.api.inspect_image(image_id).get("Size") or 0)
        with _LOCK:
            images = _read(image_dir / LEDGER_NAME)
            images[image_id] = LoadedImage(image_id, size, now_ms, now_ms)
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
                images[image_id] = LoadedImage(image_id, old.size_bytes, old.loaded_ms, now_ms)
                _write(image_dir / LEDGER_NAME, images)
        return True
    except OSError as exc:
        log.warning("the use of image %s is not noted in the buyer image ledger (%s)", image_id[:19], exc)
        return False


def collect_buyer_images(client: docker.DockerClient, image_dir: Path, in_use: frozenset[str],
                         budget_bytes: int = DEFAULT_BUDGET_BYTES) -> list[str]:
    """Remove buyer images over the budget (Rules 1-3); return the ids removed."""
    with _LOCK:
        images = _read(image_dir / LEDGER_NAME)
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
        removed = []
        for image_id in choose_evictions(images.values(), in_use, budget_bytes):
            try:
                client.api.remove_image(image_id, force=False, noprune=False)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # a container still uses it (Rule 2): next time
                    continue
                raise translate(exc, "remove a buyer image") from exc
            except FOREIGN as exc:
                raise translate(exc, "remove a buyer image") from exc
            del images[image_id]
            removed.append(image_id)
        try:
            _write(image_dir / LEDGER_NAME, images)
        except OSError as exc:
            raise SandboxError(f"the buyer image ledger cannot be written: {exc}") from exc
    if removed:
        log.info("removed %d buyer image(s) over the %d-byte budget", len(removed), budget_bytes)
    return removed
