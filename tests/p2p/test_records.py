"""Records: golden bytes, strict decoding, and the docs' test vectors."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from p2p.codec import pack, unpack
from p2p.errors import CodecError
from p2p.market_records import Agreement, Offer, Proposal
from p2p.receipt_records import Receipt, Statement
from p2p.records import U64, Record, ShortText, record, struct
from settlement.testing import key_from_label, make_chain, protocol_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Pinned: a change here is a protocol break (bump the record's version) or a mistake.
GOLDEN_SHA256 = {
    "offer.body": "59b4af8864d4572c7eb6506372863b074bb667c7343c2dc3af0d27395e0f99e0",
    "offer.id": "9bba475c53e69bdef031032d4b2fa8f0705955a9f8eb2e5fd0b6ac54ed12866e",
    "offer.envelope": "7f12757ded67f07beec4164a5e03cfa34250fc5debc04d01025c40c6977be8fc",
    "proposal.body": "f6f10e6dd92a8be872bda95760579b6c76f01a967f20f555c4d63983434c96e6",
    "proposal.id": "3beb4d7ded86da61fb71ffb8ff0cbb569755d33560fb7e8b95d14676a56fc77b",
    "proposal.envelope": "e9486ffa66b3b8a908f303a0f1c83eaa0eb94a808d9d8e9ed361cec778df8b4f",
    "agreement.body": "ddc29d920574148fe289ae4aa23f1658b8a2a13448eb8beb73e5c9a09e8341e3",
    "agreement.id": "7648e88cc4583efc4f8096f36eebe4a841d2089d51ba9cec07226cfdce6d8ffc",
    "agreement.envelope": "02046bf0749fa133ed008efb0c23ef6e600c6337cebfae5d542b587eaca3a763",
    "receipt.body": "889afdc697b9e1bdbe2995886f6476fb9e98b92f616f99f534227537f8b523d1",
    "receipt.id": "cbd03638986827a76ba555997caca45cd5b8ea2ee065218ad2fa1cb9ad156cf9",
    "receipt.envelope": "f5ba3838d68c467391c10c3d64db991f3c5db67256fd0fafbabc0e28cb59fee3",
    "final_receipt.body": "63f8540fd82f78e8b9d06f944d867b19c741a0fb7de00cf98eb92e85bbc9d04a",
    "final_receipt.id": "ab31d73f8a9295bbab4a1bca89ef7522d1c01857e72e06a626dc0909334db084",
    "final_receipt.envelope": "1e10ed9ec8c5044298913c36ed47f85a0e734071c2e25d8a9d6e2c305ab9cbb6",
    "statement.body": "53a39ea4a3fcdf9467a6d718227337aea81c4acc65cc1962e3de785c5ab82194",
    "statement.id": "f6194b4b68f543c67ffb20d3274fb96401859197ac4e81cf84fba3d79a672e33",
    "statement.envelope": "af98c153c104b6b0bf170ed9c6a982f1e4971d28ee2be80c1d1b2128e4573172",
    "key.provider.seed": "2ba9fba7743ecd87040736563489d836e770981525fd2c868c273a2025b34b52",
    "key.provider.public": "7dcba137ab35dbbca6380bc8b546ef15b1dca803ab28684513f2c78f65c83640",
    "key.buyer.seed": "5a9e6162bd0c6bfef9af294e6fb402e317d78296cd00166347f387ea0e7e8692",
    "key.buyer.public": "0f1c7ebb2d37bf9b3f2d5a791572b808598288515f4dafd933c8ef8780adbb42",
    "key.auditor.seed": "774a68bc5e00a40e704bba439c636de35020158bd4b0c65fe0c58fd5e0ea6328",
    "key.auditor.public": "5a63011ce4c360bb05066e900587bb1b5cc17d64bedabed2acbc9adac04b04e4",
}


def test_golden_bytes_are_pinned():
    vectors = protocol_vectors()
    assert {k: hashlib.sha256(v).hexdigest() for k, v in vectors.items()} == GOLDEN_SHA256


def test_protocol_doc_carries_every_vector():
    text = DOCS.read_text()
    found = dict(re.findall(r"^([a-z_.]+): ([0-9a-f]+)$", text, flags=re.M))
    for name, value in protocol_vectors().items():
        assert found.get(name) == value.hex(), f"docs/PROTOCOL.md vector {name} is missing or stale"


RECORDS = {"offer": Offer, "proposal": Proposal, "agreement": Agreement, "receipt": Receipt,
           "final_receipt": Receipt, "statement": Statement}


@pytest.mark.parametrize("name", RECORDS)
def test_records_round_trip_and_fast_path_matches_generic_packer(name):
    body = protocol_vectors()[f"{name}.body"]
    record = RECORDS[name].decode(body)
    assert record.encode() == body
    assert pack(unpack(body)) == body
    assert record.record_id() == hashlib.sha256(body).digest()


def _mutate(body: bytes, **changes) -> bytes:
    obj = unpack(body)
    obj.update(changes)
    return msgpack.packb(dict(sorted(obj.items())), use_bin_type=True)


@pytest.mark.parametrize("changes, match", [
    ({"t": "offer"}, "expected a 'receipt' record"),
    ({"v": 2}, "unsupported receipt version"),
    ({"seq": -1}, "seq"),
    ({"seq": True}, "seq"),
    ({"seq": "1"}, "seq"),
    ({"prev": b"short"}, "prev"),
    ({"reason": 7}, "reason"),
    ({"extra": 1}, "unknown fields"),
    ({"usage": {"cpu_core_ms": 1}}, "missing fields"),
])
def test_receipt_decoding_is_strict(changes, match):
    body = protocol_vectors()["receipt.body"]
    with pytest.raises(CodecError, match=match):
        Receipt.decode(_mutate(body, **changes))


def test_missing_field_is_refused():
    obj = unpack(protocol_vectors()["receipt.body"])
    del obj["amount_micros"]
    with pytest.raises(CodecError, match="missing fields"):
        Receipt.decode(msgpack.packb(obj, use_bin_type=True))


def test_unsorted_nested_map_is_refused():
    ev = make_chain(key_from_label("p"), key_from_label("b"), 1)
    obj = unpack(ev.agreement.body)
    obj["job"]["env"] = {"B": "1", "A": "2"}  # unsorted keys inside a dict field
    data = msgpack.packb(obj, use_bin_type=True)
    with pytest.raises(CodecError):
        Agreement.decode(data)


def test_oversize_record_is_refused():
    body = protocol_vectors()["receipt.body"]
    huge = _mutate(body, reason="x" * 70_000)
    with pytest.raises(CodecError, match="exceeds the limit"):
        Receipt.decode(huge)


@struct
@dataclass(frozen=True)
class _Leaf:
    n: U64
    note: ShortText | None


@struct
@dataclass(frozen=True)
class _Node:
    leaf: _Leaf
    maybe: _Leaf | None
    leaves: tuple[_Leaf, ...]


@record("test-tree", 1)
@dataclass(frozen=True)
class _Tree(Record):
    node: _Node
    spare: _Node | None
    name: ShortText


def _tree() -> _Tree:
    leaf = _Leaf(1, None)
    return _Tree(node=_Node(leaf, _Leaf(2, "two"), (leaf, _Leaf(3, None))), spare=None, name="t")


def test_nested_structs_decode_to_equal_independent_instances():
    tree = _tree()
    obj = unpack(tree.encode())
    decoded = _Tree._from_wire(obj)
    assert decoded == tree and hash(decoded) == hash(tree) and decoded.node.leaves[1].n == 3
    assert vars(decoded) == vars(tree) and vars(decoded.node.leaf) == vars(tree.node.leaf)
    obj["name"] = "changed"
    obj["node"]["leaf"]["n"] = 7
    assert decoded == tree  # nothing of the map it was decoded from is shared with it
    assert _Tree.decode(tree.encode()) == tree


@pytest.mark.parametrize("path, value, match", [
    (("node", "leaf", "n"), -1, "field _Leaf.n: expected integer in"),
    (("node", "leaf", "note"), 5, "field _Leaf.note: expected text"),
    (("node", "maybe"), {"n": 1}, "_Node.maybe: missing fields \\['note'\\]"),
    (("node", "maybe", "n"), "2", "field _Leaf.n: expected integer"),
    (("node", "leaf"), [1, None], "_Node.leaf: expected a map, got list"),
    (("node",), {"leaves": [], "leaf": {"n": 1, "note": None}, "maybe": None},
     "_Tree.node: map keys are not in canonical order"),
    (("node", "leaves"), [{"n": 1}], "_Node.leaves\\[0\\]: missing fields"),
    (("spare",), 3, "_Tree.spare: expected a map, got int"),
])
def test_nested_struct_errors_name_the_field(path, value, match):
    obj = unpack(_tree().encode())
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CodecError, match=match):
        _Tree._from_wire(obj)


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_version_that_only_equals_1_is_refused(version, evidence):
    # true and 1.0 re-encode to themselves and compare equal to 1: without the type check the same
    # receipt would have a second byte form (and a second record id).
    import msgpack

    from p2p.receipt_records import Receipt

    wire = msgpack.unpackb(evidence.receipts[0].body)
    wire["v"] = version
    with pytest.raises(CodecError, match="version"):
        Receipt.decode(msgpack.packb(wire, use_bin_type=True))


# H1 (issue 13): a map key sent as msgpack bin, anywhere in a record, is a CodecError, never a TypeError.
def _with_keys(obj, bin_key):
    """``obj`` re-encoded with ``bin_key`` (a str key at any depth) sent as a bin key instead."""
    if isinstance(obj, dict):
        return {(k.encode() if k == bin_key else k): _with_keys(v, bin_key) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with_keys(v, bin_key) for v in obj]
    return obj


def _keys_of(obj, out):
    if isinstance(obj, dict):
        out.update(obj)
        for v in obj.values():
            _keys_of(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys_of(v, out)
    return out


@pytest.mark.parametrize("name", RECORDS)
def test_a_bin_map_key_at_any_depth_is_a_codec_error(name):
    body = protocol_vectors()[f"{name}.body"]
    keys = sorted(_keys_of(unpack(body), set()))
    assert "t" in keys and len(keys) > 5
    for key in keys:
        hostile = msgpack.packb(_with_keys(unpack(body), key), use_bin_type=True)
        with pytest.raises(CodecError):
            RECORDS[name].decode(hostile)


def test_a_bin_key_in_a_text_keyed_map_field_is_a_codec_error(evidence):
    obj = unpack(evidence.proposal.body)
    for env in ({b"A": "1"}, {"A": "1", b"B": "2"}, {b"A": "1", "B": "2"}, {"A": "1", b"A": "2"}):
        obj["job"]["env"] = env
        with pytest.raises(CodecError, match="env: map keys must be text"):
            Proposal.decode(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("depth", [1, 100, 600, 1000])
def test_a_deeply_nested_value_where_a_scalar_belongs_is_a_codec_error(evidence, depth):
    obj = unpack(evidence.receipts[0].body)
    deep = None
    for _ in range(depth):
        deep = [deep]
    for field in ("seq", "t", "v"):
        with pytest.raises(CodecError):
            Receipt.decode(msgpack.packb({**obj, field: deep}, use_bin_type=True))
