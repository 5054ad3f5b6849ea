"""Structure-aware fuzzing of the archive reader (issue 13 L5): for any bytes, ImageError or a value.

Each case starts from a valid archive (legacy manifest.json + OCI layout) and applies one to three
mutations: JSON members with wrong types, lists for dicts, missing keys, huge or non-UTF-8 values
(with digests optionally recomputed so the mutation reaches the deeper checks); tar members renamed,
duplicated, dropped, turned into links or devices; header bytes flipped; the tar truncated; hostile
tar headers (pax ``size``/sparse/global keys, oversized or chained metadata headers, malformed pax
records, links and directories that claim data) spliced into the outer tar or into the layer, plain
or gzip/bzip2/xz-compressed (review of issue 13).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import random
import tarfile
import time

import pytest

from p2p.errors import ImageError
from sandbox.archive import ArchiveDigests, LayerEntry, image_archive, inspect_archive, layer_tar, read_digests

CASES = 10_000
SEED = 13

_LAYER = layer_tar([LayerEntry("bin", "dir"), LayerEntry("bin/x", "file", 0o755, data=b"x")])
_BASE, _DIGESTS = image_archive(_LAYER, {"User": "65534:65534"}, architecture="amd64", repo_tag="a/b:c")
_POOL: list[object] = [None, True, 0, -1, 2**64, 1.5e308, "", "x", "sha256:" + "0" * 64, "../../etc/passwd",
                       "/abs", [], {}, [{}], [None], [1, 2], {"digest": 5}, {"manifests": []}, "\ud800",
                       "blobs/sha256/" + "0" * 64, [{"Config": 1}], {"diff_ids": "x"}]
_RAW: list[bytes] = [b"", b"\xff\xfe\x00", b"[" * 50_000, b"1" * 5_000, b"{\"a\":", b"null", b"\"\\ud800\"",
                     b"[" + b"{}," * 1000 + b"{}]", b"\xc3\x28"]


def _files(data: bytes) -> list[list[object]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [[m.name, m.type, tar.extractfile(m).read() if m.isfile() else b""] for m in tar.getmembers()]


_BASE_FILES = _files(_BASE)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _mutate_value(rng: random.Random, value: object, depth: int = 0) -> object:
    """Replace, drop or retype one node somewhere inside a JSON value."""
    if isinstance(value, dict) and value and (depth < 4 and rng.random() < 0.7):
        key = rng.choice(sorted(value))
        out = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.3:
            out[rng.choice(["", "x", key + "x"])] = rng.choice(_POOL)
        else:
            out[key] = _mutate_value(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and (depth < 4 and rng.random() < 0.7):
        out_list = list(value)
        roll = rng.random()
        if roll < 0.2:
            out_list.append(rng.choice([out_list[0], rng.choice(_POOL)]))
        elif roll < 0.3:
            out_list.clear()
        else:
            i = rng.randrange(len(out_list))
            out_list[i] = _mutate_value(rng, out_list[i], depth + 1)
        return out_list
    roll = rng.random()
    if roll < 0.15:
        return [value]  # a list where a dict (or a string) is expected
    if roll < 0.25:
        return "x" * rng.choice([1, 300, 70_000])
    return rng.choice(_POOL)


def _json_case(rng: random.Random, files: list[list[object]]) -> None:
    names = [f[0] for f in files]
    config_name = "blobs/sha256/" + _DIGESTS.config_digest[7:]
    manifest_name = "blobs/sha256/" + (_DIGESTS.manifest_digest or "")[7:]
    target = rng.choice(["manifest.json", "index.json", manifest_name, config_name])
    if target not in names:
        return
    entry = files[names.index(target)]
    try:
        value = json.loads(entry[2])  # type: ignore[arg-type]
    except (ValueError, RecursionError):  # an earlier mutation left raw bytes here
        value = None
    if rng.random() < 0.2:
        entry[2] = rng.choice(_RAW)
    else:
        entry[2] = json.dumps(_mutate_value(rng, value)).encode()
    if rng.random() < 0.5:
        _fix_digests(files, target, config_name, manifest_name)


def _fix_digests(files: list[list[object]], target: str, config_name: str, manifest_name: str) -> None:
    """Rename a mutated blob to its new digest and point its referrers at it, so that the mutation
    reaches the checks behind the digest check."""
    by_name = {f[0]: f for f in files}
    if target not in (config_name, manifest_name):
        return
    blob = by_name[target]
    new_digest = _digest(blob[2])  # type: ignore[arg-type]
    blob[0] = "blobs/sha256/" + new_digest[7:]
    try:
        if target == config_name:
            legacy = json.loads(by_name["manifest.json"][2])  # type: ignore[arg-type]
            legacy[0]["Config"] = blob[0]
            by_name["manifest.json"][2] = json.dumps(legacy).encode()
            manifest_entry = by_name[manifest_name]
            manifest = json.loads(manifest_entry[2])  # type: ignore[arg-type]
            manifest["config"]["digest"] = new_digest
            manifest_entry[2] = json.dumps(manifest).encode()
            new_digest = _digest(manifest_entry[2])  # type: ignore[arg-type]
            manifest_entry[0] = "blobs/sha256/" + new_digest[7:]
        index = json.loads(by_name["index.json"][2])  # type: ignore[arg-type]
        index["manifests"][0]["digest"] = new_digest
        by_name["index.json"][2] = json.dumps(index).encode()
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        pass  # an earlier mutation broke a referrer: the case is still a case


def _member_case(rng: random.Random, files: list[list[object]]) -> None:
    i = rng.randrange(len(files))
    roll = rng.random()
    if roll < 0.2:
        del files[i]
    elif roll < 0.4:
        files.append(list(files[i]))
    elif roll < 0.6:
        files[i][0] = rng.choice(["../" + str(files[i][0]), "/" + str(files[i][0]), "./" + str(files[i][0]),
                                  "a//b", "x" * 300, "blobs/sha256/../../manifest.json", "extra"])
    elif roll < 0.85:
        files[i][1] = rng.choice([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE,
                                  tarfile.CHRTYPE, b"Z"])
    else:
        files.append(["blobs/sha256/" + "1" * 64, tarfile.REGTYPE, b"{}"])


def _raw_header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pax_block(body: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    return _raw_header("pax", kind, len(body)) + body.ljust(-(-len(body) // 512) * 512, b"\0")


def _record(key: str, value: str) -> bytes:
    record = f" {key}={value}\n".encode()
    n = len(record) + 1
    while len(str(n)) + len(record) != n:
        n += 1
    return str(n).encode() + record


_HOSTILE: list[bytes] = [
    _pax_block(_record("size", "0")),  # tarfile and Go read the next header where a ustar walk does not
    _pax_block(_record("size", str(1 << 40))),
    _pax_block(_record("size", "-1")),
    _pax_block(_record("size", "0"), tarfile.XGLTYPE),  # tarfile applies a global header to every member
    _pax_block(_record("path", "manifest.json"), tarfile.XGLTYPE),
    _pax_block(_record("GNU.sparse.major", "1") + _record("GNU.sparse.minor", "0")),
    _pax_block(_record("GNU.sparse.size", str(1 << 40))),
    _pax_block(b"99 comment=short\n"),  # a record longer than the header
    _pax_block(b"0 x=\n"),
    _pax_block(b"x" * 600),
    _pax_block(_record("comment", "x" * (70 << 10))),  # over MAX_HEADER_DATA_BYTES
    _raw_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 70 << 10) + b"n" * (70 << 10),
    _pax_block(_record("comment", "a")) * 5,  # a chain of metadata headers
    _raw_header("blobs/", tarfile.DIRTYPE, 1024),  # a directory that claims data
    _raw_header("l", tarfile.SYMTYPE, 512),
    _raw_header("d/", tarfile.AREGTYPE, 512),
    _raw_header("s", tarfile.GNUTYPE_SPARSE, 0),
]
_COMPRESS = [lambda d: d, lambda d: gzip.compress(d, mtime=0), bz2.compress, lzma.compress]


def _boundaries(data: bytes) -> list[int]:
    """Where each member's first header starts, and where the end-of-archive blocks start."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    return [m.offset for m in members] + [max(m.offset_data + -(-m.size // 512) * 512 for m in members)]


def _header_case(rng: random.Random, files: list[list[object]], data: bytes) -> bytes:
    """Splice a hostile header into the outer tar at a member boundary, or into the layer."""
    hostile = rng.choice(_HOSTILE)
    layer_name = "blobs/sha256/" + hashlib.sha256(_LAYER).hexdigest()
    layers = [f for f in files if f[0] == layer_name]
    if layers and rng.random() < 0.5:
        at = rng.choice(_boundaries(_LAYER))
        layers[0][2] = rng.choice(_COMPRESS)(_LAYER[:at] + hostile + _LAYER[at:])
        return _tar(files)
    try:
        at = rng.choice(_boundaries(data))
    except (tarfile.TarError, IndexError):
        at = 0
    return data[:at] + hostile + data[at:]


def _tar(files: list[list[object]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in files:
            info = tarfile.TarInfo(str(name))
            info.type = kind  # type: ignore[assignment]
            if kind in (tarfile.REGTYPE, b"Z"):
                info.size = len(data)  # type: ignore[arg-type]
                tar.addfile(info, io.BytesIO(data))  # type: ignore[arg-type]
            else:
                info.linkname = "manifest.json"
                tar.addfile(info)
    return buf.getvalue()


def _byte_case(rng: random.Random, data: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        block = rng.randrange(max(1, len(out) // 512)) * 512
        out[block + rng.randrange(512)] = rng.randrange(256)  # mostly headers' fields and checksums
    return bytes(out)


def fuzz_case(rng: random.Random) -> bytes:
    files = [list(f) for f in _BASE_FILES]
    for _ in range(rng.randint(1, 3)):
        (_json_case if rng.random() < 0.6 else _member_case)(rng, files)
    data = _tar(files)
    if rng.random() < 0.15:
        data = _header_case(rng, files, data)
    return _byte_case(rng, data) if rng.random() < 0.25 else data


def test_the_valid_base_reads():
    assert read_digests(_BASE).image_ids() == _DIGESTS.image_ids()


def test_any_bytes_give_a_value_or_image_error():
    rng = random.Random(SEED)
    outcomes = {"value": 0, "refused": 0}
    started = time.monotonic()
    for case in range(CASES):
        data = fuzz_case(rng)
        try:
            result = read_digests(data)
        except ImageError:
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # the property under test: nothing else escapes
            pytest.fail(f"case {case} (seed {SEED}) raised {type(exc).__name__}: {exc}")
        assert isinstance(result, ArchiveDigests)
        outcomes["value"] += 1
    assert outcomes["refused"] > CASES // 2 and outcomes["value"] > 0, outcomes
    print(f"{CASES} archives in {time.monotonic() - started:.1f} s: {outcomes}")


@pytest.mark.parametrize("header", [
    b"x" * 100 + b"0000644\0" + b"0" * 16 + b"77777777777\0",  # a member far larger than the file
    b"manifest.json".ljust(124, b"\0") + b"\x80" + b"\0" * 11,  # base-256 size
])
def test_hostile_headers_refused(header):
    with pytest.raises(ImageError):
        read_digests(header.ljust(512, b"\0") + b"\0" * 1024)


def test_oversized_pax_header_is_refused_before_it_is_read():
    info = tarfile.TarInfo("manifest.json")
    info.pax_headers = {"comment": "x" * (1 << 20)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImageError, match="metadata header"):
        inspect_archive(io.BytesIO(buf.getvalue()))


def test_every_hostile_header_is_refused_wherever_it_is_spliced():
    """Not only "a value or ImageError": each shape of _HOSTILE, at every member boundary of the
    outer tar and of the layer (each compression), is refused."""
    layer_name = "blobs/sha256/" + hashlib.sha256(_LAYER).hexdigest()
    cases = 0
    for hostile in _HOSTILE:
        for at in _boundaries(_BASE):
            with pytest.raises(ImageError):
                read_digests(_BASE[:at] + hostile + _BASE[at:])
            cases += 1
        for at in _boundaries(_LAYER):
            for compress in _COMPRESS:
                files = [list(f) for f in _BASE_FILES]
                next(f for f in files if f[0] == layer_name)[2] = compress(_LAYER[:at] + hostile + _LAYER[at:])
                with pytest.raises(ImageError):
                    read_digests(_tar(files))
                cases += 1
    assert cases > 300


def test_binary_xattrs_and_non_utf8_names_in_a_layer_still_read():
    """What real layers hold: a file capability (a binary pax value) and a file name that is not UTF-8."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        info = tarfile.TarInfo("bin/ping")
        info.size = 1
        info.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02 \x00\x00\x00"}
        tar.addfile(info, io.BytesIO(b"p"))
        info = tarfile.TarInfo("caf\udce9")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"c"))
    data, digests = image_archive(buf.getvalue(), {}, architecture="amd64")
    assert read_digests(data).config_digest == digests.config_digest
