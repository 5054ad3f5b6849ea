"""A guarded reader of untrusted tar streams: the headers of a buyer's tar, walked before any data.

tarfile never reads a buyer's tar (sandbox.archive Rule 5): this walk reads the headers of an image
archive's outer tar and of each of its layers (gzip, bzip2 and xz decompressed as a stream), and yields
each member's name, type, size and data offset; the caller decides what the members mean.

Rule 1: a header is checked before any of its data is read. A pax or GNU long-name header over
MAX_HEADER_DATA_BYTES is refused before it is read; no other data is ever held: a member's data is
skipped by seeking (a file) or read and discarded in chunks of _SKIP_BYTES (a stream). Memory stays
bounded whatever the tar's size.
Rule 2: every tar has one reading. A header on which tarfile and Go's archive/tar (what Docker unpacks
layers with) could disagree about where the next header starts is refused: a pax ``size`` or
``GNU.sparse.*`` key, a global pax ``path``/``linkpath``, a sparse member, a link, directory or device
that claims data, a number that is not plain octal, a bad checksum, a malformed pax record.
Rule 3: for any input bytes the walk yields members or raises ImageError (a refusal, or a tar that ends
inside a member); a read's or a decompressor's own errors (OSError, EOFError, zlib.error,
lzma.LZMAError) pass through for the caller to translate. The walk ends at the first zero block or
at a clean end of the input.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol, cast

from sandbox.errors import ImageError

MAX_HEADER_DATA_BYTES = 64 << 10  # one pax or GNU long-name header (read whole, in the outer tar and each layer)
_SKIP_BYTES = 64 << 10  # a layer's file data, decompressed and discarded (read size bounds the decompressor)


# Rule 2: why each shape is refused. tarfile and Go's archive/tar (what Docker unpacks layers with)
# both apply a pax ``size`` or ``GNU.sparse.*`` key, so the next header is not where the ustar size
# says; tarfile applies a global header's ``size``/``path`` to every later member, Go to none; both
# skip no data after a link, directory or device, whatever its size field says. Refusing these (no
# `docker save` writes them for an image under the size limits) leaves one reading of every tar.
_HEADER_ONLY = frozenset(b"123456")  # link, symlink, char, block, dir, fifo: no data follows (tarfile, Go)
_REGULAR = frozenset(b"07\0")
_METADATA_TYPES = frozenset(b"xgLK")
_MAX_METADATA_CHAIN = 4  # e.g. L, K, x before one member
_REFUSED_PAX = ("size", "GNU.sparse.")
_REFUSED_GLOBAL_PAX = ("size", "GNU.sparse.", "path", "linkpath")


@dataclass(frozen=True)
class Member:
    """One entry of a tar as the guarded walk read it."""

    name: str
    type: int  # the typeflag byte
    size: int  # data bytes after the header (0 for a header-only type)
    offset: int  # where its data starts in the (decompressed) tar

    def isreg(self) -> bool:
        return self.type in _REGULAR and not (self.type == 0 and self.name.endswith("/"))

    def isdir(self) -> bool:
        return self.type == ord("5") or (self.type == 0 and self.name.endswith("/"))


class Blocks:
    """A tar read forward: from a seekable file (``end`` known, data skipped by seeking) or a stream."""

    def __init__(self, f: Reader | IO[bytes], end: int | None) -> None:
        self.f, self.end, self.pos = f, end, 0

    def header(self) -> bytes | None:
        """The next 512-byte block; None at a clean end of the tar (where a header would start)."""
        if self.end is not None and self.pos + 512 > self.end:
            return None
        return self.read(512, at_header=True)

    def read(self, n: int, *, at_header: bool = False) -> bytes:
        """Exactly ``n`` bytes, else ImageError (b"" only for ``at_header`` at the end of a stream)."""
        if self.end is not None:
            if self.pos + n > self.end:
                raise ImageError("the tar ends inside a member", offset=self.pos)
            cast(IO[bytes], self.f).seek(self.pos)  # ``end`` known: a seekable file
        data = bytearray()
        while len(data) < n:
            chunk = self.f.read(n - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) != n and not (at_header and not data):
            raise ImageError("the tar ends inside a member", offset=self.pos)
        self.pos += len(data)
        return bytes(data)

    def skip(self, size: int) -> None:
        """Past one member's data and its padding to the next block."""
        n = -(-size // 512) * 512
        if self.end is not None:
            if self.pos + size > self.end:
                raise ImageError("the tar ends inside a member", offset=self.pos)
            self.pos += n
            return
        while n > 0:  # discarded as it comes: no copy is kept
            chunk = self.f.read(min(n, _SKIP_BYTES))
            if not chunk:
                raise ImageError("the tar ends inside a member", offset=self.pos)
            self.pos += len(chunk)
            n -= len(chunk)


def _number(field: bytes, what: str, offset: int) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text or not all(48 <= c <= 55 for c in text):
        raise ImageError(f"a tar header's {what} is not plain octal (base-256 and blanks are refused)", offset=offset)
    return int(text, 8)


def _check_block(block: bytes, offset: int) -> None:
    """The header's checksum, as tarfile and Go accept it: the unsigned sum, or the signed one that
    some old tars wrote (computed only when the unsigned one does not match)."""
    stored = _number(block[148:156], "checksum", offset)
    if stored == 256 + sum(block[:148]) + sum(block[156:]):
        return
    if stored != 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]):
        raise ImageError("a tar header has a bad checksum", offset=offset)


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """The records of one pax header, strictly (POSIX: "%d %s=%s\\n", the length counting itself)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise ImageError("a pax header is malformed", offset=offset)
        end = pos + int(digits)
        record = data[space + 1:end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise ImageError("a pax header is malformed", offset=offset)
        key, _, value = record[:-1].partition(b"=")
        # Values may be bytes (an xattr such as security.capability); names only need to compare.
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def walk_tar(blocks: Blocks, max_entries: int, too_many: str) -> Iterator[Member]:
    """The members of a tar, each header checked before any of its data is read (Rule 1). The caller
    reads or skips nothing: the walk skips each member's data itself."""
    entries = 0
    while True:
        name: str | None = None
        chain = 0
        while True:
            header_at = blocks.pos
            block = blocks.header()
            if not block or block.count(0) == 512:
                if chain:
                    raise ImageError("a tar metadata header is not followed by a member", offset=header_at)
                return
            _check_block(block, header_at)
            kind = block[156]
            size = _number(block[124:136], "size", header_at)
            if kind not in _METADATA_TYPES:
                break
            chain += 1
            if chain > _MAX_METADATA_CHAIN:
                raise ImageError("a tar member has too many metadata headers", offset=header_at)
            if size > MAX_HEADER_DATA_BYTES:
                raise ImageError("the image archive has an oversized tar metadata header",
                                 limit=MAX_HEADER_DATA_BYTES, offset=header_at)
            data = blocks.read(-(-size // 512) * 512)[:size]
            if kind in b"LK":
                if kind == ord("L"):
                    name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue
            records = _pax_records(data, header_at)
            refused = _REFUSED_GLOBAL_PAX if kind == ord("g") else _REFUSED_PAX
            bad = sorted(k for k in records if k.startswith(refused))
            if any(k.startswith("GNU.sparse.") for k in bad):
                raise ImageError("a layer holds a sparse file, which would unpack to its full size", offset=header_at)
            if bad:
                raise ImageError("a pax header moves or reshapes the member data (refused key)",
                                 actual=bad[0][:100], offset=header_at)
            if kind == ord("x") and "path" in records:
                name = records["path"]
        raw_name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")  # a layer's file names are bytes
        if name is None:
            prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
            name = (prefix.decode("utf-8", "surrogateescape") + "/" + raw_name) if prefix else raw_name
        if kind == ord("S"):
            raise ImageError("a layer holds a sparse file, which would unpack to its full size", actual=name[:200])
        header_only = kind in _HEADER_ONLY or (kind == 0 and raw_name.endswith("/"))
        if header_only and size:
            raise ImageError("a tar link, directory or device claims data", actual=name[:200], offset=header_at)
        entries += 1
        if entries > max_entries:
            raise ImageError(too_many, limit=max_entries)
        member = Member(name, kind, size, blocks.pos)
        blocks.skip(size)
        yield member


class Section:
    """One member's data, read from the archive file (seeking each time: the walk shares the file)."""

    def __init__(self, f: IO[bytes], member: Member) -> None:
        self.f, self.pos, self.end = f, member.offset, member.offset + member.size

    def read(self, size: int = -1) -> bytes:
        n = self.end - self.pos if size is None or size < 0 else min(size, self.end - self.pos)
        self.f.seek(self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readable(self) -> bool:
        return True


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def decompress(layer: Section) -> Reader:
    """The layer's tar as a stream, by the magic numbers Docker itself recognises (pkg/archive)."""
    head = layer.read(6)
    layer.pos -= len(head)
    src = cast(IO[bytes], layer)
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip.GzipFile(fileobj=src, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src, "rb", format=lzma.FORMAT_XZ)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ImageError("a zstd-compressed layer is not supported: save the image with gzip layers")
    return layer
