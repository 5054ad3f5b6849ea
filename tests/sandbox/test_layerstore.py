"""The layer store: content-addressed by diff id, a mismatch never stored, least recently used out first."""

from __future__ import annotations

import io
import os
import time

import pytest

from p2p.errors import ImageError
from sandbox.archive import sha256_digest
from sandbox.layerstore import STALE_TEMP_S, LayerStore

A, B, C = b"a" * 100, b"b" * 100, b"c" * 100


def _add(store: LayerStore, data: bytes) -> str:
    diff_id = sha256_digest(data)
    assert store.add(diff_id, io.BytesIO(data), len(data)) is True
    return diff_id


def test_a_layer_is_stored_under_its_digest_and_read_back(tmp_path):
    store = LayerStore(tmp_path / "layers", 1000)
    a, b = _add(store, A), _add(store, B)
    assert (tmp_path / "layers" / "sha256" / a[7:]).read_bytes() == A
    assert store.has(a) and not store.has(sha256_digest(C))
    assert store.held([sha256_digest(C), b, a, b]) == (b, a)  # the given order, each once
    with store.open(b) as f:
        assert f.read() == B
    assert store.size(a) == 100 and store.usage_bytes() == 200
    assert _add(store, A) == a  # added twice: still one file
    assert store.usage_bytes() == 200


def test_bytes_that_do_not_match_their_name_are_never_stored(tmp_path):
    store = LayerStore(tmp_path, 1000)
    claimed = sha256_digest(A)
    with pytest.raises(ImageError, match="does not match its diff id"):
        store.add(claimed, io.BytesIO(B), len(B))
    with pytest.raises(ImageError, match="ended early"):
        store.add(claimed, io.BytesIO(A[:50]), len(A))
    assert not store.has(claimed)
    assert list((tmp_path / "sha256").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(ImageError, match="not a sha256 digest"):
        store.has("sha256:../../etc/passwd")
    with pytest.raises(ImageError, match="does not hold"):
        store.open(claimed)


def test_least_recently_used_layers_leave_first_within_the_quota(tmp_path):
    store = LayerStore(tmp_path, 250)
    a, b = _add(store, A), _add(store, B)
    store.open(a).close()  # a is now more recently used than b
    c = _add(store, C)
    assert store.held([a, b, c]) == (a, c)
    assert store.usage_bytes() == 200
    big = b"d" * 300
    assert store.add(sha256_digest(big), io.BytesIO(big), len(big)) is False  # larger than the quota
    assert store.held([a, c]) == (a, c)


def test_a_crash_leftover_is_cleared_when_the_store_opens(tmp_path):
    LayerStore(tmp_path, 1000)
    old, fresh = tmp_path / "tmp" / "x.old", tmp_path / "tmp" / "x.fresh"
    old.write_bytes(b"torn"), fresh.write_bytes(b"in flight")
    past = time.time() - STALE_TEMP_S - 10
    os.utime(old, (past, past))
    LayerStore(tmp_path, 1000)
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["x.fresh"]
