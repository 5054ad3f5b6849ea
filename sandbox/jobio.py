"""The /io volume's contents as tar bytes: inputs in, outputs out, and log lines (pure).

Inputs go to /io/in and outputs come from /io/out of a per-job named volume: the archive API cannot
write into a read-only root, and a tmpfs is invisible to it (moby#22020), so /io is a volume.

Rule 1: every path is relative and stays inside its folder; absolute paths, `..`, links and devices
are refused, both for the buyer's inputs and for the outputs a job hands back.
Rule 2: the input tar creates /io/in and /io/out owned by 65534:65534 (the job's user), so any image
works, not only ones that ship those folders.
Rule 3: one bad entry in /io/out (a symlink, a device, a fifo) is skipped with its name and why, and
the rest of the outputs are handed back: the buyer has paid for them.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from p2p.errors import UnusableInputError
from sandbox.archive import NOBODY
from sandbox.errors import SandboxError


@dataclass(frozen=True)
class LogLine:
    stream: str  # "stdout" | "stderr"
    timestamp: str  # RFC 3339 with ns, as the engine's log driver stamped the line
    text: str


def safe_relpath(name: str) -> str:
    """`name` normalised, or UnusableInputError if it could leave its folder (Rule 1)."""
    norm = posixpath.normpath(name.replace("\\", "/"))
    if not name or name.startswith("/") or norm == "." or norm.startswith("../") or norm == "..":
        raise UnusableInputError("an input or output path must be relative and stay inside its folder",
                                 actual=name)
    return norm


def _entry(name: str, *, is_dir: bool, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + ("/" if is_dir else ""))
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size, info.mode, info.uid, info.gid, info.mtime = size, mode, NOBODY, NOBODY, 0
    return info


def input_tar(files: Mapping[str, bytes]) -> bytes:
    """A tar to extract at /io: in/ and out/ (Rule 2) plus `files` under in/."""
    buf = io.BytesIO()
    seen_dirs = {"in", "out"}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry("in", is_dir=True, mode=0o755))
        tar.addfile(_entry("out", is_dir=True, mode=0o755))
        for name in sorted(files):
            rel = "in/" + safe_relpath(name)
            parent = posixpath.dirname(rel)
            missing = []
            while parent not in seen_dirs:
                missing.append(parent)
                parent = posixpath.dirname(parent)
            for d in reversed(missing):
                tar.addfile(_entry(d, is_dir=True, mode=0o755))
                seen_dirs.add(d)
            data = files[name]
            tar.addfile(_entry(rel, is_dir=False, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def read_tar_files(data: bytes, *, what: str, strip: str | None = None, max_files: int = 10_000) -> dict[str, bytes]:
    """Regular files of a tar, keyed by safe relative path (Rule 1), with the leading ``strip/`` removed.

    Links, devices, sparse files, members claiming more bytes than the archive holds (a tar bomb),
    paths that leave their folder and more than ``max_files`` files are refused with a SandboxError
    naming ``what`` ("the job's outputs", "the inputs").
    """
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile() or member.issparse() or any(k.startswith("GNU.sparse")
                                                                   for k in member.pax_headers):
                    raise SandboxError(f"{what} hold a link, device or sparse file; refusing them",
                                       actual=member.name)
                total += member.size
                if total > len(data):  # a plain tar is never smaller than its contents: a bomb
                    raise SandboxError(f"{what} claim more bytes than the archive holds", actual=total)
                name = member.name
                if strip is not None:
                    head, _, rest = name.partition("/")
                    name = rest if head == strip else name
                extracted = tar.extractfile(member)
                files[safe_relpath(name)] = extracted.read() if extracted else b""
                if len(files) > max_files:
                    raise SandboxError(f"{what} hold too many files", expected=max_files)
    except tarfile.TarError as exc:
        raise SandboxError(f"{what} are not a readable tar: {exc}") from exc
    return files


def output_entry_problem(member: tarfile.TarInfo) -> str | None:
    """Why one entry of a `get_archive('/io/out')` tar is not handed back, or None when it is (Rule 3).

    Only directories and regular files inside ``out/`` are kept; everything else is skipped, by name.
    """
    if member.issym():
        return f"a symbolic link (to {member.linkname[:200]!r})"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "a device or fifo"
    if not (member.isfile() or member.isdir()):
        return "not a regular file"
    if member.issparse() or any(k.startswith("GNU.sparse") for k in member.pax_headers):
        return "a sparse file"
    name = member.name.rstrip("/")
    if name != "out" and not name.startswith("out/"):
        return "outside out/"
    if name != "out":
        try:
            safe_relpath(name[4:])
        except UnusableInputError:
            return "a path that leaves out/"
    return None


def read_output_tar(data: bytes, *, max_files: int = 10_000) -> dict[str, bytes]:
    """Regular files of a `get_archive('/io/out')` tar, keyed by path relative to out/ (Rule 1); other
    entries are skipped, never a reason to lose the rest (Rule 3)."""
    kept = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as src, \
            tarfile.open(fileobj=kept, mode="w", format=tarfile.PAX_FORMAT) as dst:
        try:
            for member in src:
                if output_entry_problem(member) is None and member.isfile():
                    dst.addfile(member, src.extractfile(member))
        except tarfile.TarError as exc:
            raise SandboxError(f"the job's outputs are not a readable tar: {exc}") from exc
    return read_tar_files(kept.getvalue(), what="the job's outputs", strip="out", max_files=max_files)


class LogRateLimit:
    """A token bucket over one job's log bytes (pure: ``now_s`` is passed in).

    Lines are admitted while the bucket holds their bytes (plus one for the newline); it refills at
    ``rate_bytes_per_s`` up to ``burst_bytes``. What is refused is counted, so the buyer can be told.
    Over any window of t seconds at most ``rate × t + burst`` bytes are admitted.
    """

    def __init__(self, rate_bytes_per_s: int, burst_bytes: int) -> None:
        if rate_bytes_per_s <= 0 or burst_bytes <= 0:
            raise SandboxError("a log rate limit needs a positive rate and burst",
                               actual=(rate_bytes_per_s, burst_bytes))
        self.rate, self.burst = rate_bytes_per_s, burst_bytes
        self._tokens = float(burst_bytes)
        self._at: float | None = None
        self.admitted_bytes = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0

    def _refill(self, now_s: float) -> None:
        if self._at is not None and now_s > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now_s - self._at) * self.rate)
        if self._at is None or now_s > self._at:
            self._at = now_s

    def admit(self, nbytes: int, now_s: float) -> bool:
        """Take ``nbytes`` (a line and its newline) if the bucket holds them; count a drop otherwise."""
        self._refill(now_s)
        if nbytes <= self._tokens:
            self._tokens -= nbytes
            self.admitted_bytes += nbytes
            return True
        self.dropped_bytes += nbytes
        self.dropped_lines += 1
        return False

    def note(self) -> str | None:
        """The one line the buyer is told at the end, or None when nothing was dropped."""
        if not self.dropped_bytes:
            return None
        return f"{self.dropped_bytes} bytes of logs dropped: rate limit {self.rate} B/s"


class LogFrames:
    """The engine's ``/logs`` body as it comes off the socket → the log bytes it carries (pure).

    Two layers, both undone here on whole buffers rather than per line: HTTP/1.1 chunked encoding
    (``<hex size>\r\n<data>\r\n``, a zero size ends it), and inside it Docker's stream multiplexing
    (an 8-byte header: stream type, three zero bytes, a big-endian 32-bit length; then the payload).
    Anything malformed ends the stream (``ended``) rather than raising: it is the engine's bytes.
    """

    def __init__(self) -> None:
        self._raw = bytearray()  # chunked-encoded bytes not yet decoded
        self._body = bytearray()  # decoded body bytes not yet demultiplexed
        self._chunk_left = 0  # data bytes left in the current chunk; -2: its trailing CRLF is next
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self._raw += data
        raw = self._raw
        pos = 0
        while not self.ended and pos < len(raw):
            if self._chunk_left > 0:
                take = min(self._chunk_left, len(raw) - pos)
                self._body += raw[pos:pos + take]
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_left = -2
            elif self._chunk_left == -2:
                if len(raw) - pos < 2:
                    break
                pos += 2
                self._chunk_left = 0
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    if len(raw) - pos > 64:
                        self.ended = True
                    break
                try:
                    size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
                except ValueError:
                    self.ended = True
                    break
                pos = eol + 2
                if size == 0:
                    self.ended = True
                self._chunk_left = size if size else 0
        del raw[:pos]
        return self._demux()

    def _demux(self) -> bytes:
        body, out, pos = self._body, bytearray(), 0
        while len(body) - pos >= 8:
            length = int.from_bytes(body[pos + 4:pos + 8], "big")
            if len(body) - pos - 8 < length:
                break
            out += body[pos + 8:pos + 8 + length]
            pos += 8 + length
        del body[:pos]
        return bytes(out)


class LineSplitter:
    """Chunks of one stream → complete lines; a line longer than `max_line` is cut into pieces."""

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self._buf = b""
        self._max = max_line

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while True:
            cut = self._buf.find(b"\n")
            if cut < 0:
                if len(self._buf) <= self._max:
                    return
                cut = self._max - 1
            line, self._buf = self._buf[: cut + 1], self._buf[cut + 1:]
            yield line.rstrip(b"\n")

    def flush(self) -> Iterator[bytes]:
        if self._buf:
            line, self._buf = self._buf, b""
            yield line


def stamp_key(stamp: str) -> tuple[str, int]:
    """An RFC 3339 timestamp with up to 9 fraction digits as a sortable key ("" sorts first).

    The engine trims trailing zeros from the fraction, so the strings themselves do not sort.
    """
    head, _, frac = stamp.rstrip("Z").partition(".")
    digits = "".join(c for c in frac if c.isdigit())[:9]
    return head, int(digits.ljust(9, "0")) if digits else 0


def parse_log_line(stream: str, raw: bytes) -> LogLine:
    """One `logs(timestamps=True)` line: '<RFC3339Nano> <text>'."""
    text = raw.decode(errors="replace")
    stamp, sep, rest = text.partition(" ")
    if not sep or "T" not in stamp:
        return LogLine(stream, "", text)
    return LogLine(stream, stamp, rest)
