"""Records: frozen dataclasses with a type tag and a version, one canonical byte form each.

Declare a record with ``@record("receipt", 1)`` on a frozen dataclass and nested values with
``@struct``. Field types are the whole schema: ``int``, ``bool``, ``str``, ``bytes``, ``X | None``,
``tuple[X, ...]``, ``dict[str, X]``, another struct, and ``Annotated[...]`` with ``Size(n)`` (exact
byte length), ``Range(lo, hi)`` (inclusive integer bounds) or ``MaxLen(n)`` (text, bytes or tuple).

Wire form (docs/PROTOCOL.md): a msgpack map of field name -> value, keys sorted; a record's map also
holds ``"t"`` (its tag) and ``"v"`` (its version). Rule 1: decoding refuses unknown, missing or
mistyped fields, a wrong tag or version, and non-canonical bytes (``p2p.codec``). Rule 2: a record's
id is SHA-256 of its canonical bytes, never of a signature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, Union

from p2p.codec import MAX_RECORD_BYTES, pack_sorted, preview, unpack_canonical
from p2p.errors import CodecError


@dataclass(frozen=True)
class Size:
    """Exact length of a byte string (keys, hashes, signatures)."""

    n: int


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of an integer."""

    lo: int
    hi: int


@dataclass(frozen=True)
class MaxLen:
    """Upper bound on the length of text, a byte string or a tuple."""

    n: int


U64 = Annotated[int, Range(0, 2**64 - 1)]
I64 = Annotated[int, Range(-(2**63), 2**63 - 1)]
PublicKey = Annotated[bytes, Size(32)]
Digest = Annotated[bytes, Size(32)]
ShortText = Annotated[str, MaxLen(256)]

_Conv = Callable[[Any, str], Any]
T = TypeVar("T")


def _fail(path: str, expected: str, value: Any) -> CodecError:
    return CodecError(f"field {path}: expected {expected}, got {type(value).__name__}", field=path,
                      expected=expected)


def _compile_decoder(tp: Any) -> _Conv:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        inner = _compile_decoder(base)
        for mark in marks:
            inner = _with_constraint(inner, mark)
        return inner
    if tp is int:
        def conv_int(v: Any, path: str) -> int:
            if type(v) is not int:
                raise _fail(path, "integer", v)
            return v
        return conv_int
    if tp is bool:
        def conv_bool(v: Any, path: str) -> bool:
            if type(v) is not bool:
                raise _fail(path, "boolean", v)
            return v
        return conv_bool
    if tp is str:
        def conv_str(v: Any, path: str) -> str:
            if type(v) is not str:
                raise _fail(path, "text", v)
            return v
        return conv_str
    if tp is bytes:
        def conv_bytes(v: Any, path: str) -> bytes:
            if type(v) is not bytes:
                raise _fail(path, "bytes", v)
            return v
        return conv_bytes
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        inner = _compile_decoder(args[0])
        return lambda v, path: None if v is None else inner(v, path)
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) != 2 or items[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {tp}")
        item = _compile_decoder(items[0])

        def conv_tuple(v: Any, path: str) -> tuple[Any, ...]:
            if type(v) is not list:
                raise _fail(path, "array", v)
            return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(v))
        return conv_tuple
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        if key_t is not str:
            raise TypeError("map keys must be str")
        val = _compile_decoder(val_t)

        def conv_dict(v: Any, path: str) -> dict[str, Any]:
            if type(v) is not dict:
                raise _fail(path, "map", v)
            for k in v:  # before sorting: a bin key (bytes) does not compare with text
                if type(k) is not str:
                    raise CodecError(f"field {path}: map keys must be text, got {type(k).__name__} "
                                     f"{preview(k)}", field=path)
            if list(v) != sorted(v):  # for text keys, code-point order is UTF-8 byte order
                raise CodecError(f"field {path}: map keys are not in canonical order", field=path)
            return {k: val(x, f"{path}.{k}") for k, x in v.items()}
        return conv_dict
    if isinstance(tp, type) and hasattr(tp, "_from_wire"):
        def conv_struct(v: Any, path: str) -> Any:
            return tp._from_wire(v, path)
        return conv_struct
    raise TypeError(f"unsupported field type {tp!r}")


def _with_constraint(inner: _Conv, mark: Any) -> _Conv:
    if isinstance(mark, Size):
        def sized(v: Any, path: str) -> Any:
            v = inner(v, path)
            if len(v) != mark.n:
                raise CodecError(f"field {path}: expected {mark.n} bytes, got {len(v)}", field=path)
            return v
        return sized
    if isinstance(mark, Range):
        def ranged(v: Any, path: str) -> Any:
            v = inner(v, path)
            if not mark.lo <= v <= mark.hi:
                raise CodecError(f"field {path}: {v} is outside [{mark.lo}, {mark.hi}]", field=path)
            return v
        return ranged
    if isinstance(mark, MaxLen):
        def bounded(v: Any, path: str) -> Any:
            v = inner(v, path)
            if len(v) > mark.n:
                raise CodecError(f"field {path}: length {len(v)} exceeds {mark.n}", field=path)
            return v
        return bounded
    return inner


def _to_wire(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(value[k]) for k in sorted(value, key=lambda s: s.encode("utf-8"))}
    wire = getattr(value, "_to_wire", None)
    if wire is not None:
        return wire()
    raise TypeError(f"cannot put {type(value).__name__} in a record")


def _inline_check(tp: Any, var: str, path: str, env: dict[str, Any], depth: int) -> tuple[list[str], bool]:
    """Source lines that check (and, for nested values, convert) ``var`` against ``tp`` in place, and
    whether they convert it (simple values are kept as they arrived)."""
    origin = typing.get_origin(tp)
    marks: list[Any] = []
    if origin is Annotated:
        tp, *marks = typing.get_args(tp)
        origin = typing.get_origin(tp)
    pad = "    " * depth
    simple = {int: "integer", bool: "boolean", str: "text", bytes: "bytes"}
    if tp in simple:
        conds = [f"type({var}) is not {tp.__name__}"]
        for mark in marks:
            if isinstance(mark, Size):
                conds.append(f"len({var}) != {mark.n}")
            elif isinstance(mark, MaxLen):
                conds.append(f"len({var}) > {mark.n}")
            elif isinstance(mark, Range):
                conds.append(f"not {mark.lo} <= {var} <= {mark.hi}")
        return [f"{pad}if {' or '.join(conds)}:",
                f"{pad}    raise _bad({path!r}, {var}, {_describe(tp, marks)!r})"], False
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1 or marks:
            raise TypeError(f"unsupported union {tp}")
        lines, converts = _inline_check(args[0], var, path, env, depth + 1)
        return [f"{pad}if {var} is not None:", *lines], converts
    if not marks and isinstance(tp, type) and hasattr(tp, "_wire_schema"):
        klass = f"_class{len(env)}"
        env[klass] = tp
        return _map_lines(tp, var, repr(path), env, depth, klass), True
    # Arrays and maps go through a compiled converter.
    conv = _compile_decoder(Annotated[(tp, *marks)] if marks else tp)
    name = f"_conv{len(env)}"
    env[name] = conv
    return [f"{pad}{var} = {name}({var}, {path!r})"], True


def _map_lines(cls: type, var: str, path: str, env: dict[str, Any], depth: int, klass: str) -> list[str]:
    """Source lines that check the map ``var`` against a struct or record and leave the instance in it.

    The keys must be exactly the class's wire keys in canonical order, then (for a record) the tag and
    version must match; the fields are checked in declaration order by ``_inline_check``, which inlines
    nested structs too. The instance of ``klass`` is made without ``__init__``: its dict is a copy of
    the map (one C-level copy), less the tag and version, with the converted values put back, so it
    holds every field (in wire order), and is not a dict sharing the class's keys, for which CPython
    has no fast attribute reads. ``path`` is the source of the expression that names the map in errors.
    """
    pad = "    " * depth
    fields, wire_keys, tag, version = cls._wire_schema  # type: ignore[attr-defined]
    keys = f"_keys{len(env)}"
    env[keys] = wire_keys
    values = {name: f"{var}_{i}" for i, (name, _) in enumerate(fields)}
    if tag is not None:
        values.update(t=f"{var}_t", v=f"{var}_v")
    lines = [f"{pad}if type({var}) is not dict or list({var}) != {keys}:",
             f"{pad}    raise _keys_error({var}, {keys}, {path})"]
    if wire_keys:  # the values arrive in key order, checked just above
        lines.append(f"{pad}{', '.join(values[key] for key in wire_keys)}, = {var}.values()")
    if tag is not None:
        # type() first: true == 1 and 1.0 == 1 in Python, and each re-encodes to its own bytes.
        lines += [f"{pad}if {var}_t != {tag!r} or type({var}_v) is not int or {var}_v != {version!r}:",
                  f"{pad}    raise _keys_error({var}, {keys}, {path}, {tag!r}, {version!r})"]
    converted = []
    for name, tp in fields:
        checks, converts = _inline_check(tp, values[name], f"{cls.__name__}.{name}", env, depth)
        lines += checks
        if converts:
            converted.append(name)
    lines.append(f"{pad}{var}_d = {var}.copy()")
    if tag is not None:
        lines.append(f"{pad}del {var}_d['t'], {var}_d['v']")
    lines += [f"{pad}{var}_d[{name!r}] = {values[name]}" for name in converted]
    return [*lines, f"{pad}{var} = _new({klass})", f"{pad}_setattr({var}, '__dict__', {var}_d)"]


def _describe(tp: Any, marks: list[Any]) -> str:
    text = {int: "integer", bool: "boolean", str: "text", bytes: "bytes"}[tp]
    for mark in marks:
        if isinstance(mark, Size):
            text += f" of {mark.n} bytes"
        elif isinstance(mark, MaxLen):
            text += f" of length <= {mark.n}"
        elif isinstance(mark, Range):
            text += f" in [{mark.lo}, {mark.hi}]"
    return text


def _bad(path: str, value: Any, expected: str) -> CodecError:
    return CodecError(f"field {path}: expected {expected}, got {type(value).__name__} {preview(value)}",
                      field=path, expected=expected)


def _install(cls: type[T], tag: str | None, version: int | None) -> type[T]:
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    if tag is not None and ({"t", "v"} & set(names)):
        raise TypeError("records may not have fields named 't' or 'v'")
    wire_keys = sorted(names + (["t", "v"] if tag is not None else []))  # str order == UTF-8 byte order

    def to_wire(self: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in wire_keys:
            if key == "t":
                out["t"] = tag
            elif key == "v":
                out["v"] = version
            else:
                out[key] = _to_wire(getattr(self, key))
        return out

    # The decoder is generated source (as dataclasses generates __init__): it is on the audit's hot
    # path, where a generic interpreter of the schema cost more than the rest of a receipt's checks.
    cls._wire_schema = ([(name, hints[name]) for name in names], wire_keys, tag, version)  # type: ignore[attr-defined]
    env: dict[str, Any] = {"_bad": _bad, "_keys_error": _keys_error, "_new": object.__new__,
                           "_setattr": object.__setattr__}
    lines = [f"def from_wire(klass, obj, path={cls.__name__!r}):",
             *_map_lines(cls, "obj", "path", env, 1, "klass"),
             "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - source built by _map_lines from the class's own field names
    from_wire = env["from_wire"]

    cls._to_wire = to_wire  # type: ignore[attr-defined]
    cls._from_wire = classmethod(from_wire)  # type: ignore[attr-defined]
    if tag is not None:
        cls.TAG = tag  # type: ignore[attr-defined]
        cls.VERSION = version  # type: ignore[attr-defined]
    return cls


def _keys_error(obj: Any, keys: list[str], path: str, tag: str | None = None, version: int | None = None
                ) -> CodecError:
    if type(obj) is not dict:
        return CodecError(f"{path}: expected a map, got {type(obj).__name__}")
    have = list(obj)
    for key in have:  # a bin key (bytes) neither sorts nor compares with text: name it first
        if type(key) is not str:
            return CodecError(f"{path}: map keys must be text, got {type(key).__name__} {preview(key)}",
                              actual=type(key).__name__)
    if sorted(have) == keys and have != keys:
        return CodecError(f"{path}: map keys are not in canonical order")
    if have != keys:
        missing = sorted(set(keys) - set(have))
        unknown = sorted(set(have) - set(keys))
        return CodecError(f"{path}: missing fields {missing}, unknown fields {unknown}", missing=missing,
                          unknown=unknown)
    if obj["t"] != tag:
        return CodecError(f"expected a {tag!r} record, got {preview(obj['t'])}", expected=tag,
                          actual=preview(obj["t"]))
    return CodecError(f"unsupported {tag} version {preview(obj['v'], 20)} (this build reads {version})",
                      expected=version, actual=preview(obj["v"], 20))


def struct(cls: type[T]) -> type[T]:
    """Make a frozen dataclass usable as a nested value of records."""
    return _install(cls, None, None)


def record(tag: str, version: int) -> Callable[[type[T]], type[T]]:
    """Make a frozen dataclass a top-level record with a type tag and a version."""
    def wrap(cls: type[T]) -> type[T]:
        return _install(cls, tag, version)
    return wrap


class Record:
    """Mixin for records: canonical bytes, decoding, and the record id."""

    TAG: ClassVar[str]
    VERSION: ClassVar[int]
    MAX_BYTES: ClassVar[int] = MAX_RECORD_BYTES

    def _to_wire(self) -> dict[str, Any]:  # replaced by @record
        raise NotImplementedError

    @classmethod
    def _from_wire(cls: type[T], obj: Any, path: str = "") -> T:  # replaced by @record
        raise NotImplementedError

    def encode(self) -> bytes:
        """The canonical bytes of this record."""
        return pack_sorted(self._to_wire())

    @classmethod
    def decode(cls: type[T], data: bytes) -> T:
        """Decode canonical bytes of this record type; CodecError otherwise."""
        return cls._from_wire(unpack_canonical(data, cls.MAX_BYTES))  # type: ignore[attr-defined, no-any-return]

    def record_id(self) -> bytes:
        """SHA-256 of the canonical bytes (Rule 2)."""
        return hashlib.sha256(self.encode()).digest()


def decode_one_of(payload: bytes, messages: dict[str, type[Record]], max_bytes: int, what: str) -> Record:
    """Decode a frame that may be any of ``messages`` (tag -> record class); CodecError otherwise."""
    obj: Any = unpack_canonical(payload, max_bytes)
    tag = obj.get("t") if type(obj) is dict else None
    cls = messages.get(tag) if type(tag) is str else None
    if cls is None:
        raise CodecError(f"not a {what} message (t={preview(tag)})")
    decoded: Record = cls._from_wire(obj)
    return decoded
