"""Canonical msgpack: exactly one byte string for every value Suanli signs or sends.

Rules (docs/PROTOCOL.md, "Canonical encoding"):
1. Allowed values: nil, true/false, integers in [-2**63, 2**64-1], UTF-8 text (str family), byte
   strings (bin family), arrays, and maps whose keys are text. Floats and ext types are refused.
2. Every integer, string, byte string, array and map uses the shortest msgpack form (this is what the
   msgpack reference packer emits with ``use_bin_type=True``).
3. Map keys are unique and sorted by their UTF-8 bytes.
4. Decoding is bounded (``max_bytes``; nesting depth) and strict: bytes that decode but are not the
   canonical encoding of the decoded value are refused, so a record has exactly one byte form and
   its id (a hash of those bytes) is well defined.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from p2p.errors import CodecError

MAX_RECORD_BYTES = 64 * 1024
MAX_DEPTH = 16

# msgpack decodes ext type -1 (timestamp) itself, without calling ext_hook. As a float it is refused:
# by ``unpack``'s type check, and by ``unpack_canonical``'s byte comparison (a float never packs to an
# ext), at no cost to the fast path (H1).
_TIMESTAMP_AS_FLOAT = 1

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def _canonical(value: Any, depth: int = 0) -> Any:
    """Return a value msgpack packs canonically: sorted maps, lists for tuples; refuse the rest."""
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply", limit=MAX_DEPTH)
    if value is None or value is True or value is False or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise CodecError(f"integer {value} does not fit in 64 bits", actual=value)
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for key in sorted(value, key=_key_bytes):
            out[key] = _canonical(value[key], depth + 1)
        return out
    raise CodecError(f"cannot encode {type(value).__name__} canonically", actual=type(value).__name__)


def _key_bytes(key: Any) -> bytes:
    if not isinstance(key, str):
        raise CodecError(f"map keys must be text, not {type(key).__name__}", actual=type(key).__name__)
    return key.encode("utf-8")


_packer = msgpack.Packer(use_bin_type=True, strict_types=True, autoreset=True)
# Large inputs (bundles) are compared with this packer's own buffer instead of a copy of it, which for
# tens of megabytes costs more than the packing; the buffer is its state, so one caller at a time.
_LARGE = 1 << 20
_large_packer = msgpack.Packer(use_bin_type=True, strict_types=True, autoreset=False)
_large_lock = threading.Lock()


def pack(value: Any) -> bytes:
    """The canonical bytes of ``value`` (Rule 1-3)."""
    data: bytes = _packer.pack(_canonical(value))
    return data


def pack_sorted(value: Any) -> bytes:
    """Pack a value already in canonical shape (maps built in sorted key order, lists not tuples).

    The fast path for records, whose field order is sorted once per class; ``unpack`` round-trips
    every result, and tests check ``pack_sorted(x) == pack(x)`` for every record type.
    """
    data: bytes = _packer.pack(value)
    return data


def _pairs_hook(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    last: bytes | None = None
    for key, value in pairs:
        if not isinstance(key, str):
            raise CodecError("map key is not text")
        kb = key.encode("utf-8")
        if last is not None and kb <= last:
            raise CodecError("map keys are duplicated or not in canonical order", key=key)
        last = kb
        out[key] = value
    return out


def unpack(data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Decode canonical bytes; CodecError for anything else (Rule 4)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise CodecError(f"record of {len(data)} bytes exceeds the limit of {max_bytes}",
                         limit=max_bytes, actual=len(data))
    if not data:
        raise CodecError("empty input")
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, object_pairs_hook=_pairs_hook,
            ext_hook=_refuse_ext, timestamp=_TIMESTAMP_AS_FLOAT,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError("trailing bytes after the record") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise CodecError(f"not valid msgpack: {str(exc) or type(exc).__name__}") from exc
    _check_depth_and_types(value, 0)
    if _packer.pack(value) != bytes(data):
        raise CodecError("bytes are not the canonical encoding of their value")
    return value


def unpack_canonical(data: bytes, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Decode bytes that must re-encode to themselves, leaving key order and types to a schema.

    The fast path for records: their generated decoders check every map's key order and every
    value's type, which together with the byte comparison here give Rule 4. Maps may come back with
    byte-string keys (msgpack ``bin``) here: every caller (``p2p.records``, ``settlement.bundle``)
    compares a map's keys with its expected text keys, which refuses them, and never sorts or
    prints keys it has not checked (docs/PROTOCOL.md, "Map keys").
    """
    if len(data) > max_bytes:
        raise CodecError(f"record of {len(data)} bytes exceeds the limit of {max_bytes}",
                         limit=max_bytes, actual=len(data))
    try:
        value = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext,
                                timestamp=_TIMESTAMP_AS_FLOAT)
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError("trailing bytes after the record") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise CodecError(f"not valid msgpack: {str(exc) or type(exc).__name__}") from exc
    try:
        same = _packer.pack(value) == data if len(data) < _LARGE else _packs_to_large(value, data)
    except (ValueError, TypeError, RecursionError) as exc:  # nesting past the packer's limit
        raise CodecError(f"cannot be re-encoded: {str(exc) or type(exc).__name__}") from exc
    if not same:
        raise CodecError("bytes are not the canonical encoding of their value")
    return value


def _packs_to_large(value: Any, data: bytes) -> bool:
    """Whether ``value`` packs to exactly ``data``, compared in the packer's buffer (no copy of it)."""
    if type(data) is not bytes:
        same: bool = _packer.pack(value) == data
        return same
    with _large_lock:
        try:
            _large_packer.pack(value)
            with _large_packer.getbuffer() as packed:
                return len(packed) == len(data) and data.startswith(packed)
        finally:
            _large_packer.reset()


def preview(value: Any, limit: int = 40) -> str:
    """A short rendering of a decoded (possibly hostile) value for an error message: scalars cut to
    ``limit`` characters, arrays and maps by their size only (the repr of a nesting 1,000 deep
    raises RecursionError, and a 64 KiB one would be built whole before being cut)."""
    if isinstance(value, (str, bytes)):
        return repr(value[:limit])[:limit + 3]
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return f"a map of {len(value)}"
    if value is None or isinstance(value, (bool, int)):
        return repr(value)[:limit]
    return type(value).__name__


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} is not allowed", actual=code)


def _check_depth_and_types(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply", limit=MAX_DEPTH)
    if isinstance(value, float):
        raise CodecError("floats and timestamps (ext type -1) are not allowed in records")
    if isinstance(value, list):
        for item in value:
            _check_depth_and_types(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _check_depth_and_types(item, depth + 1)
