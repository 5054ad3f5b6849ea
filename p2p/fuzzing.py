"""A structure-aware fuzzer for decoders of hostile bytes (tests and ``bench/fuzz.py``; issue 13, H1).

Rule 1: for any input bytes a decoder returns a value or raises one of the errors it is allowed
(the project's remote-input errors); anything else is a crash, recorded with the frame that made it.
Rule 2: frames are mutations of valid encodings (seeds), made on the msgpack structure rather than on
bytes alone, so that they reach past the first byte check: a map key sent as ``bin`` or as an
unhashable array, a value of another msgpack type, ext types, floats, non-shortest forms, duplicate
or missing keys, deep nesting, edge integers, truncation and extension of arrays; then, now and
then, byte-level bit flips, cuts and tails. A ``bin`` value that holds msgpack (an envelope's body, a
job message's receipt) is parsed too, so mutations reach the records inside envelopes.
Rule 3: deterministic for a seed: a crash is reproduced by ``fuzz(target, frames, seed)`` again.

Pure: no IO of its own, no clock (the caller times it); the decoders under test do what they do.
"""

from __future__ import annotations

import random
import struct as _struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack


class Map:
    """A msgpack map as sent: pairs in wire order, any key (duplicates and unhashable keys included)."""

    __slots__ = ("pairs", "enc")

    def __init__(self, pairs: tuple[tuple[Any, Any], ...]) -> None:
        self.pairs = pairs
        self.enc: bytes | None = None


class Arr:
    """A msgpack array."""

    __slots__ = ("items", "enc")

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items
        self.enc: bytes | None = None


class Nested:
    """A ``bin`` value whose bytes are themselves msgpack (an envelope body, a receipt in a message)."""

    __slots__ = ("tree", "enc")

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self.enc: bytes | None = None


@dataclass(frozen=True)
class Raw:
    """Bytes put on the wire as they are (non-shortest forms, deep nesting, odd headers)."""

    data: bytes


Node = Any  # None | bool | int | float | str | bytes | Map | Arr | Nested | Raw | msgpack.ExtType


def to_tree(value: Any, depth: int = 0) -> Node:
    """The tree of a decoded msgpack value; ``bin`` values that hold a map or an array become Nested."""
    if isinstance(value, dict):
        return Map(tuple((to_tree(k, depth + 1), to_tree(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, list):
        return Arr(tuple(to_tree(v, depth + 1) for v in value))
    if (isinstance(value, bytes) and len(value) > 2 and depth < 8
            and ((value[0] & 0xE0) == 0x80 or value[0] in (0xDC, 0xDD, 0xDE, 0xDF))):
        try:
            inner = msgpack.unpackb(value, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - any bytes that are not msgpack stay bytes
            return value
        if isinstance(inner, (dict, list)):
            return Nested(to_tree(inner, depth + 1))
    return value


def _header(n: int, fix: int, fix_max: int, b16: int, b32: int) -> bytes:
    if n <= fix_max:
        return bytes((fix | n,))
    if n < 1 << 16:
        return bytes((b16,)) + n.to_bytes(2, "big")
    return bytes((b32,)) + n.to_bytes(4, "big")


def encode(node: Node) -> bytes:
    """The wire bytes of a tree (containers cache theirs: mutations copy only the path they change)."""
    kind = type(node)
    if kind is Map or kind is Arr or kind is Nested:
        if node.enc is None:
            if kind is Map:
                body = b"".join(encode(k) + encode(v) for k, v in node.pairs)
                node.enc = _header(len(node.pairs), 0x80, 15, 0xDE, 0xDF) + body
            elif kind is Arr:
                node.enc = _header(len(node.items), 0x90, 15, 0xDC, 0xDD) + b"".join(map(encode, node.items))
            else:
                inner = encode(node.tree)
                node.enc = msgpack.packb(inner, use_bin_type=True)
        return node.enc  # type: ignore[no-any-return]
    if kind is Raw:
        return node.data  # type: ignore[no-any-return]
    if kind is int and not -(2**63) <= node <= 2**64 - 1:
        wrapped: bytes = b"\xcf" + (node % 2**64).to_bytes(8, "big")
        return wrapped
    data: bytes = msgpack.packb(node, use_bin_type=True)
    return data


_EDGE_INTS = (0, 1, -1, 2, 15, 16, 31, 32, -32, -33, 127, 128, 255, 256, 65535, 65536, 2**31, 2**32 - 1,
              2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63))


def _deep(depth: int, leaf: bytes = b"\xc0") -> Raw:
    return Raw(b"\x91" * depth + leaf)


def _wide(value: Any) -> Raw | None:
    """A non-shortest encoding of a small int or text (the canonical check must refuse it)."""
    if type(value) is int and 0 <= value < 2**32:
        return Raw(b"\xcf" + value.to_bytes(8, "big"))
    if type(value) is str and len(value.encode()) < 32:
        data = value.encode()
        return Raw(b"\xd9" + bytes((len(data),)) + data)
    if type(value) is bytes and len(value) < 256:
        return Raw(b"\xc5" + len(value).to_bytes(2, "big") + value)
    return None


@dataclass
class Mutator:
    """Makes frames from seeds (Rule 2), all drawn from one ``random.Random``."""

    rng: random.Random
    names: tuple[str, ...] = ("t", "v", "body", "sigs")

    def scalar(self) -> Node:
        r = self.rng
        pick = r.randrange(14)
        if pick == 0:
            return None
        if pick == 1:
            return r.random() < 0.5
        if pick in (2, 3):
            return r.choice(_EDGE_INTS)
        if pick == 4:
            return r.randrange(-(2**63), 2**64)
        if pick == 5:
            return r.choice(self.names)
        if pick == 6:
            return r.choice(self.names).encode()
        if pick == 7:
            return r.choice(("", "\u00e9", "\ud7ff", "x" * 300, "t"))
        if pick == 8:
            return r.randbytes(r.choice((0, 1, 31, 32, 33, 64, 65)))
        if pick == 9:
            return r.choice((0.0, 1.0, -1.5, float("inf"), float("nan")))
        if pick == 10:
            # ext type -1 (timestamps) cannot be made with ExtType: see the raw headers below
            return msgpack.ExtType(r.randrange(128), r.randbytes(r.choice((0, 1, 4, 8, 16))))
        if pick == 11:
            return Raw(b"\xca" + _struct.pack(">f", 1.0))  # float32
        if pick == 12:
            return _deep(r.choice((1, 2, 17, 100, 600, 1000, 1023, 1100)))
        return Raw(r.choice((b"\xc1", b"\xd9", b"\xdc\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc4\xff",
                             b"\xd6\xff\x00\x00\x00\x01", b"\xd7\xff" + bytes(8), b"\xc7\x0c\xff" + bytes(12))))

    def value(self, depth: int = 0) -> Node:
        r = self.rng
        pick = r.randrange(8)
        if pick < 5 or depth > 3:
            return self.scalar()
        if pick == 5:
            return Arr(tuple(self.value(depth + 1) for _ in range(r.randrange(4))))
        if pick == 6:
            return Map(tuple((self.key(), self.value(depth + 1)) for _ in range(r.randrange(4))))
        return Map(((r.choice(self.names), self.value(depth + 1)),))

    def key(self) -> Node:
        r = self.rng
        pick = r.randrange(10)
        if pick < 4:
            return r.choice(self.names)
        if pick < 7:
            return r.choice(self.names).encode()  # the H1 key: text sent as bin
        if pick == 7:
            return Arr((r.choice(self.names),))  # unhashable in Python
        if pick == 8:
            return Map(((r.choice(self.names), 1),))
        return self.scalar()

    def mutate_node(self, node: Node, depth: int) -> Node:
        """A mutated copy of ``node``: either of itself here, or of one of its children (random descent)."""
        r = self.rng
        kind = type(node)
        if kind is Nested and r.random() < 0.85:
            return Nested(self.mutate_node(node.tree, depth + 1))
        if kind is Map and node.pairs and r.random() < 0.7:
            i = r.randrange(len(node.pairs))
            k, v = node.pairs[i]
            pair = (k, self.mutate_node(v, depth + 1)) if r.random() < 0.8 else (self.mutate_key(k), v)
            return Map(node.pairs[:i] + (pair,) + node.pairs[i + 1:])
        if kind is Arr and node.items and r.random() < 0.7:
            i = r.randrange(len(node.items))
            return Arr(node.items[:i] + (self.mutate_node(node.items[i], depth + 1),) + node.items[i + 1:])
        return self.mutate_here(node)

    def mutate_key(self, key: Node) -> Node:
        if type(key) is str and self.rng.random() < 0.6:
            return key.encode()  # H1: the same key, as bin
        return self.key()

    def mutate_here(self, node: Node) -> Node:
        r = self.rng
        kind = type(node)
        if kind is Map and node.pairs:
            pairs = list(node.pairs)
            op = r.randrange(8)
            i = r.randrange(len(pairs))
            if op == 0:
                del pairs[i]
            elif op == 1:
                pairs.insert(i, pairs[i])  # duplicate key
            elif op == 2:
                j = r.randrange(len(pairs))
                pairs[i], pairs[j] = pairs[j], pairs[i]
            elif op == 3:
                pairs.insert(r.randrange(len(pairs) + 1), (self.key(), self.value()))
            elif op == 4:
                pairs = [(self.mutate_key(k), v) for k, v in pairs]  # every key at once
            elif op == 5:
                pairs[i] = (self.mutate_key(pairs[i][0]), pairs[i][1])
            elif op == 6:
                return Raw(b"\xdf" + len(pairs).to_bytes(4, "big") + encode(Map(tuple(pairs)))[1:]) \
                    if len(pairs) < 16 else Map(tuple(pairs))
            else:
                return Arr(tuple(v for _, v in pairs))
            return Map(tuple(pairs))
        if kind is Arr:
            items = list(node.items)
            op = r.randrange(6)
            if op == 0 and items:
                del items[r.randrange(len(items)):]
            elif op == 1:
                items += [items[-1] if items else self.value()] * r.choice((1, 2, 5, 100))
            elif op == 2:
                items.insert(r.randrange(len(items) + 1), self.value())
            elif op == 3 and items:
                items[r.randrange(len(items))] = self.value()
            elif op == 4:
                return Map(tuple((str(i), v) for i, v in enumerate(items)))
            else:
                return self.value()
            return Arr(tuple(items))
        if kind is Nested:
            return self.mutate_here(node.tree) if r.random() < 0.5 else encode(node.tree)[: r.randrange(8)]
        op = r.randrange(6)
        if op == 0:
            wide = _wide(node)
            if wide is not None:
                return wide
        if op == 1:
            if type(node) is str:
                return node.encode()
            if type(node) is bytes:
                return node.decode("utf-8", "replace")
        if op == 2:
            return Arr((node,))
        if op == 3:
            return Map(((r.choice(self.names), node),))
        if op == 4 and type(node) is int:
            return r.choice(_EDGE_INTS)
        return self.value()

    def frame(self, seed: Node) -> bytes:
        """One frame: one to four structural mutations of ``seed``, then sometimes byte-level damage."""
        r = self.rng
        tree = seed
        for _ in range(1 + min(3, int(r.expovariate(1.2)))):
            tree = self.mutate_node(tree, 0)
        data = encode(tree)
        if r.random() < 0.15:
            data = self.damage(data)
        return data

    def damage(self, data: bytes) -> bytes:
        r = self.rng
        if not data:
            return bytes((r.randrange(256),))
        op = r.randrange(4)
        if op == 0:
            buf = bytearray(data)
            for _ in range(r.choice((1, 1, 2, 8))):
                buf[r.randrange(len(buf))] ^= 1 << r.randrange(8)
            return bytes(buf)
        if op == 1:
            return data[: r.randrange(len(data))]
        if op == 2:
            return data + r.randbytes(r.choice((1, 2, 9)))
        i = r.randrange(len(data))
        return data[:i] + bytes((r.randrange(256),)) + data[i:]


@dataclass(frozen=True)
class Target:
    """A decoder under fuzz: its seeds (valid encodings) and the errors it is allowed to raise."""

    name: str
    decode: Callable[[bytes], Any]
    seeds: Sequence[bytes]
    allowed: tuple[type[BaseException], ...]


@dataclass
class Crash:
    target: str
    seed: int
    index: int
    frame: bytes
    error: BaseException

    def __str__(self) -> str:
        return (f"{self.target}: frame {self.index} of seed {self.seed} raised {type(self.error).__name__}: "
                f"{self.error!s:.200} (frame {len(self.frame)} bytes: {self.frame[:96].hex()}"
                f"{'...' if len(self.frame) > 96 else ''})")


@dataclass
class FuzzResult:
    target: str
    frames: int = 0
    values: int = 0  # frames that decoded (mutations that kept a frame valid, or made another valid one)
    errors: dict[str, int] = field(default_factory=dict)  # allowed error -> count
    crashes: list[Crash] = field(default_factory=list)


def _names_in(tree: Node, out: set[str]) -> set[str]:
    kind = type(tree)
    if kind is Map:
        for k, v in tree.pairs:
            if type(k) is str:
                out.add(k)
            _names_in(v, out)
    elif kind is Arr:
        for v in tree.items:
            _names_in(v, out)
    elif kind is Nested:
        _names_in(tree.tree, out)
    return out


def seed_trees(seeds: Sequence[bytes]) -> list[Node]:
    trees = []
    for data in seeds:
        tree = to_tree(msgpack.unpackb(data, raw=False, strict_map_key=False))
        if encode(tree) != data:
            raise ValueError("a seed is not plain msgpack the fuzzer can re-encode byte for byte")
        trees.append(tree)
    return trees


def fuzz(target: Target, frames: int, seed: int, *, max_crashes: int = 20) -> FuzzResult:
    """Run ``frames`` mutated frames through ``target.decode`` (Rule 1); deterministic for ``seed``."""
    trees = seed_trees(target.seeds)
    names: set[str] = set()
    for tree in trees:
        _names_in(tree, names)
    mutator = Mutator(random.Random(f"{target.name}/{seed}"), tuple(sorted(names)))
    result = FuzzResult(target.name)
    decode, allowed = target.decode, target.allowed
    for index in range(frames):
        data = mutator.frame(mutator.rng.choice(trees))
        result.frames += 1
        try:
            decode(data)
        except allowed as exc:
            name = type(exc).__name__
            result.errors[name] = result.errors.get(name, 0) + 1
        except Exception as exc:  # noqa: BLE001 - Rule 1: anything else is what we are looking for
            result.crashes.append(Crash(target.name, seed, index, data, exc))
            if len(result.crashes) >= max_crashes:
                break
        else:
            result.values += 1
    return result
