"""Key files and peer ids, checked against py-libp2p's own derivation."""

from __future__ import annotations

import os

import pytest

import p2p.identity
from p2p.errors import KeyFileError
from p2p.identity import (
    b58decode,
    b58encode,
    generate_key,
    load_key,
    peer_id_from_public,
    public_from_peer_id,
    save_key,
    signature_checker,
    verify_signature,
)
from settlement.testing import key_from_label


def test_peer_id_equals_py_libp2p_derivation():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.peer.id import ID

    for _ in range(5):
        key = generate_key()
        theirs = ID.from_pubkey(Ed25519PrivateKey.from_bytes(key.seed).get_public_key()).pretty()
        assert key.peer_id == theirs
        assert key.peer_id.startswith("12D3KooW")
        assert public_from_peer_id(key.peer_id) == key.public


def test_base58_round_trip_with_leading_zeros():
    for data in (b"", b"\0", b"\0\0abc", bytes(range(40))):
        assert b58decode(b58encode(data)) == data


def test_key_file_is_0600_and_round_trips(tmp_path):
    key = generate_key()
    path = save_key(key, tmp_path / "sub" / "node.key")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_key(path) == key
    with pytest.raises(KeyFileError, match="already exists"):
        save_key(generate_key(), path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_readable_by_others_is_refused_with_the_fix(tmp_path, mode):
    path = save_key(generate_key(), tmp_path / "node.key")
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {path}"):
        load_key(path)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x01\x12\x40" + bytes(63)])
def test_malformed_key_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_key(path)


def test_mismatched_public_half_is_refused(tmp_path):
    key, other = generate_key(), generate_key()
    path = tmp_path / "k"
    path.write_bytes(key.to_file_bytes()[:36] + other.public)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="does not match"):
        load_key(path)


def test_missing_key_file_says_how_to_create_one(tmp_path):
    with pytest.raises(KeyFileError, match="suanli keys new"):
        load_key(tmp_path / "none.key")


def test_peer_id_of_wrong_length_key_is_refused():
    with pytest.raises(ValueError):
        peer_id_from_public(b"short")
    with pytest.raises(ValueError):
        public_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")


def _signature_cases():
    key, other = key_from_label("provider"), key_from_label("buyer")
    for size in (0, 1, 900, 5000):  # 5000: more than the checker's first buffer holds
        message = bytes(i % 251 for i in range(size))
        sig = key.sign(message)
        flipped = sig[:-1] + bytes([sig[-1] ^ 1])
        yield from [(key.public, message, sig), (other.public, message, sig), (key.public, message + b"x", sig),
                    (key.public, message, flipped), (key.public, message, sig[:63]), (key.public[:31], message, sig),
                    (bytes(32), message, sig), (key.public, message, bytes(64))]


def test_signature_checker_answers_as_verify_signature():
    check = signature_checker()
    cases = list(_signature_cases())
    answers = [check(*case) for case in cases]
    assert answers == [verify_signature(*case) for case in cases]
    assert answers.count(True) == 4
    assert [check(*case) for case in cases] == answers  # the reused buffer keeps nothing between calls


def test_signature_checker_falls_back_to_the_public_binding(monkeypatch):
    monkeypatch.setattr(p2p.identity, "_lib", None)
    assert signature_checker() is verify_signature
