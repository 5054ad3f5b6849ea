"""Canonical msgpack: one byte string per value, strict and bounded decoding."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.codec import MAX_RECORD_BYTES, pack, preview, unpack, unpack_canonical
from p2p.errors import CodecError, RemoteProtocolError

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_round_trip_and_one_byte_form(value):
    data = pack(value)
    assert unpack(data) == value
    assert unpack_canonical(data) == value
    assert pack(unpack(data)) == data


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 1000), min_size=2, max_size=6))
def test_map_key_order_does_not_change_bytes(d):
    reversed_dict = dict(reversed(list(d.items())))
    assert pack(d) == pack(reversed_dict)


def test_known_bytes():
    assert pack({"b": 1, "a": [1, b"x"], "c": None}).hex() == "83a1619201c40178a16201a163c0"
    assert pack(2**32) == b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00"
    assert pack("é") == b"\xa2\xc3\xa9"


@pytest.mark.parametrize("data, why", [
    (msgpack.packb({"b": 1, "a": 2}), "order"),
    (b"\x82\xa1a\x01\xa1a\x02", "duplicated"),
    (b"\xcc\x01", "canonical"),          # 1 as uint8 instead of a fixint
    (b"\xd9\x01a", "canonical"),         # str8 for a 1-byte string
    (msgpack.packb(1.5), "float"),
    (b"\xd4\x01\x00", "ext"),
    (b"\x01\x02", "trailing"),
    (b"\xc1", "msgpack"),
    (b"", "empty"),
    (b"\x92\x01", "msgpack"),           # truncated array
    (b"\x91" * 40 + b"\x01", "deep"),
])
def test_non_canonical_and_malformed_bytes_are_refused(data, why):
    with pytest.raises(CodecError):
        unpack(data)


def test_oversize_is_refused_before_decoding():
    data = pack(b"x" * (MAX_RECORD_BYTES + 1))
    with pytest.raises(CodecError, match="exceeds the limit"):
        unpack(data)
    with pytest.raises(CodecError, match="exceeds the limit"):
        unpack_canonical(data)
    assert unpack(data, max_bytes=len(data)) == b"x" * (MAX_RECORD_BYTES + 1)


@pytest.mark.parametrize("value", [1.5, {1: 2}, object(), 2**64, -(2**63) - 1, {"k": {1.0}}])
def test_unencodable_values_are_refused(value):
    with pytest.raises(CodecError):
        pack(value)


def test_codec_errors_are_remote_protocol_errors():
    assert issubclass(CodecError, RemoteProtocolError)


def test_large_inputs_are_compared_in_the_packers_buffer_as_strictly():
    """From a megabyte on, the canonical comparison runs in the packer's own buffer: same answers."""
    items = [0] * (1 << 20) + [256]
    data = pack(items)  # an array32 header, a million fixints, then 256 as uint16 (cd 01 00)
    assert len(data) > 1 << 20 and data[5] == 0 and data.endswith(b"\xcd\x01\x00")
    assert unpack_canonical(data, len(data)) == items
    assert unpack_canonical(bytearray(data), len(data)) == items
    assert unpack_canonical(data[:-3] + b"\xcd\x01\x01", len(data))[-1] == 257
    int16 = data[:-3] + b"\xd1\x01\x00"  # 256 as int16: the same value in as many bytes
    uint8 = data[:5] + b"\xcc\x00" + data[6:]  # 0 as uint8: the same value, one byte longer
    for bad in (int16, uint8):
        assert msgpack.unpackb(bad) == items
        with pytest.raises(CodecError, match="canonical"):
            unpack_canonical(bad, len(bad))


def test_preview_of_hostile_values_is_short_and_never_recurses():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert preview(deep) == "an array of 1"
    assert preview({b"k": 1}) == "a map of 1"
    assert preview("x" * 10_000) == repr("x" * 40) and len(preview(b"y" * 10_000)) <= 43
    assert preview(2**64 - 1) == str(2**64 - 1)


@pytest.mark.parametrize("depth", [17, 511, 600, 1000, 1023, 1024, 5000])
def test_unpack_canonical_of_any_nesting_is_a_value_or_a_codec_error(depth):
    data = b"\x91" * depth + b"\xc0"
    try:
        unpack_canonical(data)
    except CodecError:
        pass
    with pytest.raises(CodecError):
        unpack(data)  # the generic decoder bounds nesting at MAX_DEPTH


def test_unpack_canonical_leaves_bin_keys_to_the_schema_and_unpack_refuses_them():
    data = msgpack.packb({b"a": 1, "b": 2}, use_bin_type=True)
    assert unpack_canonical(data) == {b"a": 1, "b": 2}  # records and bundles compare keys with text keys
    with pytest.raises(CodecError, match="map key is not text"):
        unpack(data)


@pytest.mark.parametrize("data", [b"\xd6\xff\x00\x00\x00\x01", b"\x81\xa1a\xd6\xff\x00\x00\x00\x01",
                                  b"\x91\xd6\xff\x00\x00\x00\x01"])
def test_the_timestamp_ext_type_is_refused_like_every_ext_type(data):
    """msgpack decodes ext type -1 as a Timestamp without calling the ext hook (Rule 1: no ext types)."""
    with pytest.raises(CodecError):
        unpack(data)
    with pytest.raises(CodecError):
        unpack_canonical(data)
