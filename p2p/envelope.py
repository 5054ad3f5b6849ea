"""Signed envelopes: every promise one peer makes to another, checkable by anyone from bytes alone.

A record class names its signers in order: ``SIGNERS = (("provider", "provider"), ("buyer", "buyer"))``
is a list of (role, field holding that signer's 32-byte public key). Signature i covers

    domain(role_i) || body || sig_0 || ... || sig_(i-1)
    domain(role)  = "suanli/<tag>/<version>/<role>"   (UTF-8)

so a signature for one kind of record, version or role can never be replayed as another, and a
countersignature commits to the signature it counters (the buyer signs what the provider signed).

Rule 1: signatures are verified over ``body`` exactly as it arrived, never over a re-encoding.
Rule 2: an envelope holds a prefix of its signers' signatures: the first signer always, later ones
as they countersign. ``is_complete`` says whether every signer has signed.

Wire form: the canonical msgpack map ``{"body": bin, "sigs": [bin64, ...]}``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from p2p.codec import MAX_RECORD_BYTES, pack_sorted, unpack
from p2p.errors import CodecError, LocalProtocolError, SignatureError
from p2p.identity import NodeKey, peer_id_from_public, verify_signature
from p2p.records import Record

SIGNATURE_BYTES = 64
# Room for the envelope map around a body of at most MAX_RECORD_BYTES with up to 4 signatures.
_ENVELOPE_OVERHEAD = 32 + 4 * (SIGNATURE_BYTES + 2)

R = TypeVar("R", bound=Record)
_ENVELOPE_KEYS = ["body", "sigs"]
_new, _setattr = object.__new__, object.__setattr__


_DOMAINS: dict[type[Record], tuple[bytes, ...]] = {}


def domain(cls: type[Record], role: str) -> bytes:
    return f"suanli/{cls.TAG}/{cls.VERSION}/{role}".encode()


def _domains(cls: type[Record]) -> tuple[bytes, ...]:
    """Every signer's domain, computed once per record class (the audit's hot path)."""
    found = _DOMAINS.get(cls)
    if found is None:
        found = _DOMAINS[cls] = tuple(domain(cls, role) for role, _ in _signers(cls))
    return found


def _signers(cls: type[Record]) -> tuple[tuple[str, str], ...]:
    signers: tuple[tuple[str, str], ...] | None = getattr(cls, "SIGNERS", None)
    if not signers:
        raise LocalProtocolError(f"{cls.__name__} declares no SIGNERS")
    return signers


@dataclass(frozen=True)
class Signed(Generic[R]):
    """A record, its canonical body bytes as they arrived, and a prefix of its signatures."""

    body: bytes
    record: R
    sigs: tuple[bytes, ...]

    @functools.cached_property
    def record_id(self) -> bytes:
        """SHA-256 of the body: the record's id (signatures are not part of it); computed once."""
        return hashlib.sha256(self.body).digest()

    @property
    def is_complete(self) -> bool:
        return len(self.sigs) == len(_signers(type(self.record)))

    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in _signers(type(self.record)))

    def signer_public(self, index: int) -> bytes:
        _, field = _signers(type(self.record))[index]
        public: bytes = getattr(self.record, field)
        return public

    def signed_message(self, index: int) -> bytes:
        prefix = _domains(type(self.record))[index]
        return prefix + self.body + b"".join(self.sigs[:index]) if index else prefix + self.body

    def to_wire(self) -> dict[str, Any]:
        return {"body": self.body, "sigs": list(self.sigs)}

    def to_bytes(self) -> bytes:
        return pack_sorted(self.to_wire())

    def verify(self) -> None:
        """Check every signature present (Rule 1); SignatureError names the first that fails."""
        for index, sig in enumerate(self.sigs):
            if not verify_signature(self.signer_public(index), self.signed_message(index), sig):
                role = self.roles()[index]
                raise SignatureError(
                    f"{self.record.TAG} {self.record_id.hex()[:16]}: the {role} signature does not verify "
                    f"(signer {peer_id_from_public(self.signer_public(index))})",
                    role=role, record_id=self.record_id)


def sign_record(record: R, key: NodeKey) -> Signed[R]:
    """Sign ``record`` as its first signer; the key must be the one the record names."""
    body = record.encode()
    signed: Signed[R] = Signed(body=body, record=record, sigs=())
    return _add_signature(signed, key)


def countersign(signed: Signed[R], key: NodeKey) -> Signed[R]:
    """Add the next signer's signature, after checking the ones already there."""
    signed.verify()
    return _add_signature(signed, key)


def _add_signature(signed: Signed[R], key: NodeKey) -> Signed[R]:
    index = len(signed.sigs)
    signers = _signers(type(signed.record))
    if index >= len(signers):
        raise LocalProtocolError(f"{signed.record.TAG} is already signed by all of {[r for r, _ in signers]}")
    if signed.signer_public(index) != key.public:
        raise LocalProtocolError(
            f"{signed.record.TAG}: this key ({key.peer_id}) is not the {signers[index][0]} the record names",
            role=signers[index][0])
    sig = key.sign(signed.signed_message(index))
    return Signed(body=signed.body, record=signed.record, sigs=signed.sigs + (sig,))


def _envelope_parts(obj: Any, tag: str) -> tuple[bytes, list[Any]]:
    """The body and signature list of an unpacked envelope: the one definition of the envelope's shape
    (``{"body": bin, "sigs": [...]}``, keys in that order), for the full path and the fast path."""
    if type(obj) is not dict or list(obj) != _ENVELOPE_KEYS:
        raise CodecError(f"not a signed {tag} envelope")
    body, sigs = obj.values()
    if type(body) is not bytes or type(sigs) is not list:
        raise CodecError(f"malformed signed {tag} envelope")
    return body, sigs


def _check_signature_sizes(sigs: list[Any], tag: str) -> None:
    for sig in sigs:
        if type(sig) is not bytes or len(sig) != SIGNATURE_BYTES:
            raise CodecError(f"{tag}: a signature is not {SIGNATURE_BYTES} bytes")


def signed_from_wire(obj: Any, cls: type[R], *, min_sigs: int = 1, verify: bool = True) -> Signed[R]:
    """Decode an envelope already unpacked from canonical msgpack and (unless told not to) verify it.

    ``verify=False`` is for callers that check signatures themselves, one by one, to report each
    failure (settlement.chain); everything else about the envelope is still checked here.
    """
    return signed_list_from_wire((obj,), cls, min_sigs=min_sigs, verify=verify)[0]


def signed_list_from_wire(objs: Iterable[Any], cls: type[R], *, min_sigs: int = 1, verify: bool = True
                          ) -> list[Signed[R]]:
    """``signed_from_wire`` of every envelope, in one loop (the audit's hot path): the first envelope
    that fails raises what it raises alone.

    Each ``Signed`` is made without the frozen dataclass's ``__init__`` (its fields are checked here):
    the same fields in a dict of its own (attribute reads take CPython's fast path), where
    ``record_id`` is cached as usual.
    """
    decode = cls.decode
    out: list[Signed[R]] = []
    n_signers = 0  # known once an envelope is well-formed (a class without signers raises then)
    for obj in objs:
        body, sigs = _envelope_parts(obj, cls.TAG)
        n_signers = n_signers or len(_domains(cls))
        if not min_sigs <= len(sigs) <= n_signers:
            raise SignatureError(f"{cls.TAG}: {len(sigs)} signatures, expected {min_sigs} to {n_signers}",
                                 expected=min_sigs, actual=len(sigs))
        _check_signature_sizes(sigs, cls.TAG)
        record = decode(body)
        signed: Signed[R] = _new(Signed)
        _setattr(signed, "__dict__", {"body": body, "record": record, "sigs": tuple(sigs)})
        if verify:
            signed.verify()
        out.append(signed)
    return out


def open_signed(data: bytes, cls: type[R], *, min_sigs: int = 1) -> Signed[R]:
    """Decode and verify envelope bytes from the network or a file."""
    obj = unpack(data, getattr(cls, "MAX_BYTES", MAX_RECORD_BYTES) + _ENVELOPE_OVERHEAD)
    return signed_from_wire(obj, cls, min_sigs=min_sigs)


def open_countersigned(data: bytes, ours: Mapping[bytes, Signed[R]]) -> Signed[R] | None:
    """``open_signed`` for the common case of an envelope we signed coming back with one signature more.

    When ``data`` is exactly ``ours[body]`` (the same body bytes and signatures, all checked when we
    made it) plus one next signature that verifies, that envelope, after verifying only the new
    signature: decoding the body and checking our own signatures again would repeat work (about a
    third of a countersignature's CPU on a provider). None for anything else; the caller then takes
    ``open_signed`` and its error messages. The envelope's shape is checked by the same code as
    ``open_signed``'s; tests/p2p/test_envelope_fast_path.py holds the two paths to the same answers.
    """
    try:
        body, sigs = _envelope_parts(unpack(data, MAX_RECORD_BYTES + _ENVELOPE_OVERHEAD), "")
        mine = ours.get(body)
        if mine is None or len(sigs) != len(mine.sigs) + 1 or len(sigs) > len(_domains(type(mine.record))):
            return None
        _check_signature_sizes(sigs, "")
    except CodecError:
        return None
    *earlier, new = sigs
    if tuple(earlier) != mine.sigs:
        return None
    signed = Signed(body=mine.body, record=mine.record, sigs=mine.sigs + (new,))
    index = len(mine.sigs)
    return signed if verify_signature(signed.signer_public(index), signed.signed_message(index), new) else None
