"""Records: golden bytes, strict decoding, and the docs' test vectors."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from market.records import Agreement, Offer, Proposal
from p2p.codec import pack, unpack
from p2p.errors import CodecError
from p2p.records import U64, Record, ShortText, record, struct
from settlement.records import Receipt, Statement
from settlement.testing import key_from_label, make_chain, protocol_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Pinned: a change here is a protocol break (bump the record's version) or a mistake.
GOLDEN_SHA256 = {
    "offer.body": "6881275ef2ad5af35d07d68119bf1281a2cb87bf80cc11d9d7a119a083f37bb6",
    "offer.id": "cdd30b8dc81109a3c6c1d9a1ba544e9ec73fb44bc5a09e60e17c592041749f0c",
    "offer.envelope": "4df2e748fab8ecf216cbe89c6d80870a6d3dd694fc953e3ee379d20b759d6ef7",
    "proposal.body": "4c4a71ac28e4b48ea9f125caafd4ca7b6173b06b939c8a8e5a34b7b302192bb7",
    "proposal.id": "02fe40f9e705e3da6405e70e656adacbe1ea8abe3be53ce57f20ac4b6b409ceb",
    "proposal.envelope": "db539a42cb92f0499d360a5ce87177b008492564b0196e1ab6b7f5b26ba4ec4e",
    "agreement.body": "659517f462c18eb32ba369b9b9402ddab4b183858ee114458f635736865befd8",
    "agreement.id": "0adf90051e7723a5c6603284a2265800584aad5bf940d053273503073e017c2c",
    "agreement.envelope": "ee23694fad95131c8b096828e4545068042dd27f2730d56ff50da9ad312a0fb2",
    "receipt.body": "8426ad5bff2cc104f8168b5a481b8154147f5c5997a7f5b534425d0fccf1b963",
    "receipt.id": "7f219fefb541cc8873751c610dee28d3c3f77e19f7955710904227e027c3df66",
    "receipt.envelope": "75ecb885b8a84752926b9fe30db057ae0cf78d3c1bad92ecf9ed6b24ac30078f",
    "final_receipt.body": "b64f0a77b214ff8a0c85d2949c1472c9fc66f9922959d48283c41842314fbc77",
    "final_receipt.id": "24751a87d0a3f8b2eb4c2ce072c6c8ee3db5cdc42aa4fdcbfd1e90879d99d829",
    "final_receipt.envelope": "6933dbe035f50452a43197e03969963a9b211d325022b19fa6fb4014d54f9000",
    "statement.body": "79c49080a7c712c40021e7d89bc1dd88a8a3b44e2b93f2a04878669c66df465c",
    "statement.id": "68226a4efe5fe60d80288248e2f5fa7da98042074c4a82ad24d963ecc439fd31",
    "statement.envelope": "0dd33e5660098c330d652e3f56e6a69976e6c81cf21a819924f611264bd13757",
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

    from settlement.records import Receipt

    wire = msgpack.unpackb(evidence.receipts[0].body)
    wire["v"] = version
    with pytest.raises(CodecError, match="version"):
        Receipt.decode(msgpack.packb(wire, use_bin_type=True))
