"""Layer-aware shipping of image archives (issue 19; the buyer's and the provider's halves).

Rule 6 (sandbox.archive's numbering; issue 19): a *partial* archive is a clean archive whose manifests still
list every layer but which lacks the contents of some, which the provider said it holds
(``write_partial_archive``, the buyer's side; p2p.job_wire Rule 3). Only a layer whose bytes are its diff
id (an uncompressed layer: under an OCI blob name, that name's digest is the diff id) may be left out,
since the provider's store holds uncompressed layers by diff id (sandbox.layerstore). The provider reads
a partial archive with ``inspect_archive(..., store=)``: a layer may be absent only when the store holds
it, and every other check of Rules 2-5 is the same (one image, no foreign member, bounded sizes; an
absent layer counts its stored size against the unpacked bound). ``write_clean_archive(..., store=)``
copies each absent layer from the store and hashes it as it is copied: anything but its diff id refuses
the archive (the store is not trusted, sandbox.layerstore Rule 2). The layers that did arrive are checked
as in any archive (their blob digests here, their diff ids by the engine's ``docker load``), then
``store_layers`` keeps the uncompressed ones for the next buyer.
"""

from __future__ import annotations

import logging
import tarfile
from typing import IO, Protocol, cast

from sandbox.archive import _PARSE_ERRORS, ImagePlan, _members, _write_archive, inspect_archive
from sandbox.errors import ImageError
from sandbox.tarwalk import Section

log = logging.getLogger("suanli.sandbox.archive")


class LayerSource(Protocol):
    """What a partial archive's missing layers are taken from (sandbox.layerstore.LayerStore)."""

    def has(self, diff_id: str) -> bool: ...

    def size(self, diff_id: str) -> int: ...

    def open(self, diff_id: str) -> IO[bytes]: ...

    def add(self, diff_id: str, src: IO[bytes], size: int) -> bool: ...

    def discard(self, diff_id: str) -> None: ...


def write_partial_archive(src: IO[bytes], plan: ImagePlan, omit: frozenset[str], dst: IO[bytes]) -> tuple[str, ...]:
    """The buyer's side of Rule 6: the clean archive of ``plan`` without the contents of the layers whose
    diff ids are in ``omit`` (the manifests still list them); the diff ids left out, in order. A compressed
    layer is always sent. ``dst`` (seekable) ends right after the end-of-archive blocks: the tar writer's
    padding to a 10 KiB record is left out, since it is on the wire and every tar reader stops at those
    blocks (bench/images.py: 15 KB of a 1 MB partial archive was padding)."""
    names = {name: diff_id for name, diff_id in plan.layers() if diff_id in omit and plan.omittable(name, diff_id)}
    start = dst.tell()
    _write_archive(src, plan, dst, frozenset(names), None)
    dst.seek(start)
    end = start + _tar_end(dst)
    dst.seek(end)
    dst.truncate()
    return tuple(dict.fromkeys(names.values()))


def _tar_end(f: IO[bytes]) -> int:
    """Where a tar we wrote ends: after its last member's data (in whole blocks) and two zero blocks."""
    with tarfile.open(fileobj=f, mode="r:") as tar:
        last = 0
        for member in tar:
            last = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return last + 2 * tarfile.BLOCKSIZE


def layer_diff_ids(f: IO[bytes]) -> tuple[str, ...]:
    """The diff ids of an archive's layers in the config's order (a shared layer may repeat); ImageError
    when it is not one readable image archive."""
    return inspect_archive(f).diff_ids


def store_layers(src: IO[bytes], plan: ImagePlan, store: LayerSource) -> tuple[str, ...]:
    """After a successful load, keep the archive's uncompressed layers in ``store`` (Rule 6); the diff ids
    it holds afterwards, in order. Bookkeeping (sandbox.layerstore Rule 5): a layer whose bytes are not its
    diff id is not kept, logged, and nothing fails."""
    held = []
    try:
        src.seek(0)
        members = _members(src)
    except (ImageError, *_PARSE_ERRORS) as exc:
        log.warning("the archive's layers are not kept in the layer store (%s)", exc)
        return ()
    for name, diff_id in plan.layers():
        member = members.get(plan.sources[name])
        try:
            if name in plan.absent or member is None or not plan.omittable(name, diff_id):
                kept = store.has(diff_id)
            else:
                kept = store.add(diff_id, cast(IO[bytes], Section(src, member)), member.size)
        except ImageError as exc:  # e.g. a compressed layer under a legacy name: not the stored form
            log.info("layer %s is not kept in the layer store: %s", diff_id[:19], exc)
            kept = False
        if kept:
            held.append(diff_id)
    return tuple(held)
