"""Tar headers that would make the reader hold far more than the archive weighs (review of issue 13).

tarfile reads a pax or GNU long-name header's data whole, so every header of the outer tar and of
each (decompressed) layer is walked by the archive's own guarded reader first: an oversized metadata
header, a pax ``size`` or sparse key (which move the next header to where a naive walker does not
look), or a link/directory entry that claims data, is refused with ImageError, in bounded memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import tracemalloc
from collections.abc import Callable

import pytest

from p2p.errors import ImageError
from sandbox.archive import LayerEntry, image_archive, inspect_archive, layer_tar

BIG = 32 << 20  # what one hostile header claims; the reader's peak must stay far below it
PEAK_LIMIT = 4 << 20


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pax(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        n = len(record) + 1
        while len(str(n).encode()) + len(record) != n:
            n += 1
        body += str(n).encode() + record
    return _header("pax", kind, len(body)) + body.ljust(-(-len(body) // 512) * 512, b"\0")


def _big_metadata(kind: bytes) -> Callable[[], object]:
    """One ``BIG``-byte pax or GNU long-name header, as a generator of chunks (never whole in memory)."""
    def chunks():  # type: ignore[no-untyped-def]
        if kind == tarfile.XHDTYPE:
            prefix = b"%d comment=" % BIG
            yield _header("pax", kind, BIG) + prefix
            left = BIG - len(prefix) - 1
        else:
            yield _header("././@LongLink", kind, BIG)
            left = BIG - 1
        while left > 0:
            yield b"x" * min(left, 1 << 20)
            left -= 1 << 20
        yield b"\n" if kind == tarfile.XHDTYPE else b"\0"
        yield _header("f", tarfile.REGTYPE, 0) + b"\0" * 1024
    return chunks


def _compressed(chunks: Callable[[], object], opener: Callable[[io.BytesIO], object]) -> bytes:
    buf = io.BytesIO()
    with opener(buf) as z:  # type: ignore[attr-defined]
        for chunk in chunks():  # type: ignore[attr-defined]
            z.write(chunk)
    return buf.getvalue()


OPENERS = {
    "gzip": lambda b: gzip.GzipFile(fileobj=b, mode="wb", compresslevel=1, mtime=0),
    "bzip2": lambda b: bz2.BZ2File(b, "wb", compresslevel=1),
    "xz": lambda b: lzma.LZMAFile(b, "wb", preset=0),
}


def _inspect_peak(data: bytes) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        inspect_archive(io.BytesIO(data))
        error: BaseException | None = None
    except Exception as exc:  # the assertion below says which
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("compression", sorted(OPENERS))
@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "longname"])
def test_a_huge_metadata_header_inside_a_compressed_layer_is_refused_in_bounded_memory(compression, kind):
    layer = _compressed(_big_metadata(kind), OPENERS[compression])
    assert len(layer) < BIG // 16
    data, _ = image_archive(layer, {}, architecture="amd64")
    error, peak = _inspect_peak(data)
    assert isinstance(error, ImageError) and "metadata header" in str(error), error
    assert peak < PEAK_LIMIT, peak


def test_a_huge_metadata_header_in_a_plain_layer_is_refused():
    layer = b"".join(_big_metadata(tarfile.XHDTYPE)())  # type: ignore[operator]
    data, _ = image_archive(layer, {}, architecture="amd64")
    error, peak = _inspect_peak(data)
    assert isinstance(error, ImageError), error
    assert peak < PEAK_LIMIT, peak


def _smuggled(first: bytes) -> bytes:
    """An outer tar whose ``first`` headers make tarfile read a ``BIG`` pax header that a walker
    trusting each ustar size would skip as member data."""
    hidden = b"".join(_big_metadata(tarfile.XHDTYPE)())  # type: ignore[operator]
    return first + hidden + b"\0" * 1024


SMUGGLERS = {
    # A pax size=0 override: tarfile skips no data and reads the next block as a header.
    "pax-size": lambda n: _pax({"size": "0"}) + _header("manifest.json", tarfile.REGTYPE, n),
    # The same through a global header, which tarfile applies to every later member.
    "global-size": lambda n: _pax({"size": "0"}, tarfile.XGLTYPE) + _header("manifest.json", tarfile.REGTYPE, n),
    # A directory (or link) that claims data: tarfile reads none.
    "dir-with-data": lambda n: _header("blobs/", tarfile.DIRTYPE, n),
    "symlink-with-data": lambda n: _header("l", tarfile.SYMTYPE, n),
    # Sparse keys change where tarfile thinks the data ends.
    "sparse-keys": lambda n: _pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})
    + _header("manifest.json", tarfile.REGTYPE, n),
}


@pytest.mark.parametrize("name", sorted(SMUGGLERS))
def test_headers_that_move_the_next_header_are_refused_in_bounded_memory(name):
    hidden_size = 512 + BIG + 512  # the hidden pax header and its data, as the outer member's "data"
    data = _smuggled(SMUGGLERS[name](hidden_size))
    error, peak = _inspect_peak(data)
    assert isinstance(error, ImageError), error
    assert peak < PEAK_LIMIT, peak


@pytest.mark.parametrize("name", ["pax-size", "dir-with-data", "sparse-keys"])
def test_the_same_shapes_inside_a_layer_are_refused(name):
    layer = gzip.compress(_smuggled(SMUGGLERS[name](512 + BIG + 512)), compresslevel=1, mtime=0)
    data, _ = image_archive(layer, {}, architecture="amd64")
    error, peak = _inspect_peak(data)
    assert isinstance(error, ImageError), error
    assert peak < PEAK_LIMIT, peak


def test_ordinary_long_names_and_pax_records_still_read():
    """What real `docker save`s and layers hold: long names (pax path, GNU longname), xattrs."""
    long = "d/" + "n" * 200
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(long)
        info.size, info.pax_headers = 3, {"SCHILY.xattr.user.k": "v"}
        tar.addfile(info, io.BytesIO(b"abc"))
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(long)
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    for layer in (buf.getvalue(), gzip.compress(gnu.getvalue(), mtime=0), bz2.compress(buf.getvalue()),
                  lzma.compress(gnu.getvalue()), layer_tar([LayerEntry("a", "file", data=b"x" * 600)])):
        data, digests = image_archive(layer, {}, architecture="amd64")
        assert inspect_archive(io.BytesIO(data)).digests.config_digest == digests.config_digest
    with pytest.raises(ImageError, match="too much disk"):
        data, _ = image_archive(gzip.compress(gnu.getvalue(), mtime=0), {}, architecture="amd64")
        inspect_archive(io.BytesIO(data), max_unpacked_bytes=4)
