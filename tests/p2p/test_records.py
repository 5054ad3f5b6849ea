"""Records: golden bytes, strict decoding, and the docs' test vectors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgpack
import pytest

from market.records import Agreement, Offer, Proposal
from p2p.codec import pack, unpack
from p2p.errors import CodecError
from settlement.records import Receipt, Statement
from settlement.testing import key_from_label, make_chain, protocol_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Pinned: a change here is a protocol break (bump the record's version) or a mistake.
GOLDEN_SHA256 = {
    "offer.body": "6881275ef2ad5af35d07d68119bf1281a2cb87bf80cc11d9d7a119a083f37bb6",
    "offer.id": "cdd30b8dc81109a3c6c1d9a1ba544e9ec73fb44bc5a09e60e17c592041749f0c",
    "offer.envelope": "4df2e748fab8ecf216cbe89c6d80870a6d3dd694fc953e3ee379d20b759d6ef7",
    "proposal.body": "3f757689efa8527c844e296ad972cec86960cda95e06dc104cb7c53418057709",
    "proposal.id": "652b2f5c55095d53a84e462716a20b654112cd1cc0d33d98c8c6ad9af9b98814",
    "proposal.envelope": "72815b263685baccfac10464340baaac4b8a853a7e17b8e1cfeae7c24c1a6438",
    "agreement.body": "534b1d7bf8bb2dc12ab7ad43f3699d83428f014c59c659f7b13419fd6150687e",
    "agreement.id": "c26436748f59af457f4444024aa9ff7d62154b2e12fd53224df05c1d5eed7868",
    "agreement.envelope": "30f6c6a80b478111114916df17d8a1457e0f2938ebacfc228641bb5712b23fc3",
    "receipt.body": "58bc58997fa878db6cb175efcab14fcda1ebf5b2fb5f9394cb635b6c4b645e6b",
    "receipt.id": "0b6f029c29d6cc43a689315dd7e5178516ab2c9e69559dd61f879ec76b4f97b2",
    "receipt.envelope": "d049b9868976d8dec57d01d5b953b1c15c9a71cdc57e82bc38dc8d449dd8adc8",
    "final_receipt.body": "d1d3b07b394027098e1a4b8328b5ab6f8765b2ad1160e0eac4c0dc356570e248",
    "final_receipt.id": "a14c7a3ec77ac88e62d6819fcd335f5982b28bdcd835ca966df9adf14969ed39",
    "final_receipt.envelope": "12404c84c7b88d38781075f6c42f8559867f36118e30b61a3e73c989f8554503",
    "statement.body": "4d3d8cd2c8a1f66f6aba8b58497e77d18df7292534773ba4b53806c4f86a1ff9",
    "statement.id": "b287de95467375ced598522c5c6ffc820a7ccd149871c4cd2ac90a8ce4e79a44",
    "statement.envelope": "74e4fe77ee199cdc79fe6a084d663d09deda434a6240a37c7ec3476e60e1aae2",
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
