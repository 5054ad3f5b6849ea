"""Ed25519 node keys, key files, and libp2p peer ids, without importing libp2p.

A node's key is its identity everywhere: its libp2p peer id, and the key that signs its offers,
agreements and receipts. Records carry the raw 32-byte public key; people see the peer id.

Key file format: libp2p's protobuf serialisation of a private key (go-libp2p ``MarshalPrivateKey``):
``08 01 12 40 || seed(32) || public(32)``. The 32-byte-data form ``08 01 12 20 || seed`` is accepted on
load. Rule 1: a key file is written with mode 0600 and a key file readable by group or others is
refused, with a message that says how to fix it.

Peer id (libp2p spec, peer-ids.md): the public key's protobuf ``08 01 12 20 || public`` is 36 bytes,
short enough to be inlined with the identity multihash ``00 24``; the peer id is the base58btc text
of those 38 bytes (it starts ``12D3KooW``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from p2p.errors import KeyFileError

try:  # PyNaCl's own cffi module: private, so every use below has a fallback to the public binding
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without it
    _ffi = _lib = None

_KEY_PREFIX_64 = bytes([0x08, 0x01, 0x12, 0x40])
_KEY_PREFIX_32 = bytes([0x08, 0x01, 0x12, 0x20])
_PUBKEY_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_IDENTITY_MULTIHASH = bytes([0x00, 0x24])
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise ValueError(f"not base58: {ch!r}")
        n = n * 58 + digit
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def peer_id_from_public(public: bytes) -> str:
    """The libp2p peer id of a raw 32-byte Ed25519 public key."""
    if len(public) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(public)}")
    return b58encode(_IDENTITY_MULTIHASH + _PUBKEY_PREFIX + public)


def public_from_peer_id(peer_id: str) -> bytes:
    """The raw public key inlined in an Ed25519 peer id; ValueError for any other kind of id."""
    raw = b58decode(peer_id)
    head = _IDENTITY_MULTIHASH + _PUBKEY_PREFIX
    if len(raw) != 38 or not raw.startswith(head):
        raise ValueError(f"not an Ed25519 libp2p peer id: {peer_id!r}")
    return raw[len(head):]


@dataclass(frozen=True)
class NodeKey:
    """An Ed25519 signing key with its public key and peer id."""

    seed: bytes = field(repr=False)
    public: bytes
    peer_id: str

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        public = bytes(SigningKey(seed).verify_key)
        return cls(seed=seed, public=public, peer_id=peer_id_from_public(public))

    def sign(self, message: bytes) -> bytes:
        """A detached 64-byte Ed25519 signature of ``message``."""
        return _signing_key(self.seed).sign(message).signature

    def to_file_bytes(self) -> bytes:
        return _KEY_PREFIX_64 + self.seed + self.public


_SIGNERS: dict[bytes, SigningKey] = {}


def _signing_key(seed: bytes) -> SigningKey:
    # SigningKey construction derives the public key (a scalar multiplication): cache it per seed.
    key = _SIGNERS.get(seed)
    if key is None:
        key = _SIGNERS[seed] = SigningKey(seed)
    return key


def verify_signature(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public``.

    libsodium refuses non-canonical signatures and small-order keys, so no signature is malleable.
    """
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, public)
    except (BadSignatureError, ValueError):
        return False
    return True


SignatureCheck = Callable[[bytes, bytes, bytes], bool]


def signature_checker() -> SignatureCheck:
    """A function that answers exactly as ``verify_signature``, for one loop over many signatures.

    PyNaCl's binding allocates and fills a copy of every message it verifies; this one calls libsodium
    with one output buffer, grown as needed and reused, so the function must stay with the thread that
    asked for it (make one per call of a verifying loop, never share one between threads). Where
    PyNaCl's cffi module cannot be used, it is ``verify_signature`` itself.
    """
    if _lib is None or _ffi is None:
        return verify_signature
    sign_open, new = _lib.crypto_sign_open, _ffi.new
    message_len = new("unsigned long long *")
    buffer = new("unsigned char[]", 1024)

    def check(public: bytes, message: bytes, signature: bytes) -> bool:
        nonlocal buffer
        if len(public) != 32 or len(signature) != 64:
            return False
        signed = signature + message
        if len(buffer) < len(signed):
            buffer = new("unsigned char[]", len(signed))
        ok: bool = sign_open(buffer, message_len, signed, len(signed), public) == 0
        return ok
    return check


def generate_key() -> NodeKey:
    return NodeKey.from_seed(os.urandom(32))


def key_from_file_bytes(data: bytes, path: str = "<bytes>") -> NodeKey:
    if len(data) == 68 and data.startswith(_KEY_PREFIX_64):
        key = NodeKey.from_seed(data[4:36])
        if key.public != data[36:]:
            raise KeyFileError(f"key file {path}: the public half does not match the private half", path=path)
        return key
    if len(data) == 36 and data.startswith(_KEY_PREFIX_32):
        return NodeKey.from_seed(data[4:])
    raise KeyFileError(f"key file {path} is not an Ed25519 libp2p private key ({len(data)} bytes)", path=path)


def save_key(key: NodeKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``key`` to ``path`` with mode 0600 (created that way, never widened afterwards)."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a folder made for a key is private
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {target} already exists; refusing to overwrite it", path=str(target)) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.to_file_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def write_atomically(path: Path, data: bytes) -> None:
    """Write a whole file or nothing, durably: a temporary file of its own in the same folder (mode 0600,
    as mkstemp creates it whatever the umask; two writers or a crash mid-write never leave a torn file or
    share a temporary name), fsynced, renamed over ``path``, then the folder fsynced so that the rename
    survives a crash too (best effort: a filesystem that cannot fsync a folder still has the file).
    Kept here, beside the key files, because ``p2p`` is the layer that both ``sandbox`` and the offline
    commands may import: it pulls in neither libp2p nor trio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_or_create_key(path: str | os.PathLike[str]) -> tuple[NodeKey, bool]:
    """The key at ``path``, or a new one saved there (mode 0600); the flag is True when it was created."""
    if Path(path).exists():
        return load_key(path), False
    key = generate_key()
    save_key(key, path)
    return key, True


def load_key(path: str | os.PathLike[str]) -> NodeKey:
    """Read a key file, refusing one that group or others can read."""
    target = Path(path)
    try:
        st = target.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {target} does not exist; create one with `suanli keys new --out {target}`",
                           path=str(target)) from None
    except OSError as exc:
        raise KeyFileError(f"key file {target}: {exc.strerror}", path=str(target)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {target} is not a regular file", path=str(target))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"key file {target} is readable by group or others (mode {mode:04o}); fix it with: chmod 600 {target}",
            path=str(target), mode=mode)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {target}: {exc.strerror}", path=str(target)) from exc
    return key_from_file_bytes(data, str(target))
