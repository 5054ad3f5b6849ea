"""The stream messages' golden bytes (issue 14, item 6): docs/PROTOCOL.md "Message vectors"."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from node.wire_vectors import message_vectors
from p2p.job_wire import decode_message as decode_job
from p2p.negotiate_wire import decode_message as decode_negotiation

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Pinned: a change here is a protocol break (bump the message's version) or a mistake.
GOLDEN_SHA256 = {
    "message.negotiate.propose": "fdfb3b3cfb97a1eebd7c7ee2c26d037dfbff80720403dbc7a944ed60b5b3c360",
    "message.negotiate.counter": "14eb480a7ae48bc4fd8fefe399af026d79ee92fd355a5741d7b7cd82df784502",
    "message.negotiate.reject": "23990c5e9eccb2f9c00ee5511fb16955e5c22eb81de894c082a1e4635b778066",
    "message.negotiate.agree": "a202aea4028e31cd73508924e8275172a09cd708c1b89d8c0be3f15ebba61e39",
    "message.negotiate.accept": "ea3928de8295e58b90a8b8de8a75e8bf79b4da0c9de23f4b31ea672f153725a2",
    "message.negotiate.confirm": "171a1df30502e3baef4f25373a6d714287beb6b20caeef126984df88106fbce2",
    "message.job.start": "cd4a35e3a6a2acbf77465002c0c8d7a343a6c6aac7da593e06543786200281f3",
    "message.job.have_layers": "72086ced6282e8bfb104077911596993cb328d00788f71d01198a0e6a2026471",
    "message.job.status": "ade2af5ab97d10596e38da08d2c3ed94bde9936f81859e31c922b8c61be96c32",
    "message.job.chunk": "1c52fb3a65bd1d8cc81dee8c742748975ddf7492e4b2965f537f26e1a1fe941c",
    "message.job.end": "3e51600ef0f4ee0d76202636fd3944fa0abd7eb88d723d0faf043e3b39b8a5e9",
    "message.job.log": "2bdf65d17188b759af6ad29f436ecbdeb054e8878cd71218a38652bbdf87ea76",
    "message.job.receipt": "128e17916e2f4748402b4e11916e5296d597f64447e4a31c3b9d5fbdf192496f",
    "message.job.countersign": "4b0190b347c21f1dfbf52b4490225506dc3897dc56883dde52ba5f018b7ef678",
    "message.job.cancel": "495faf1b5d92528823c065801714a50baa375a3d5bbe99d2c6e7e6720e4de918",
    "message.job.done": "81c7ad1aa6849bf53adfe5b091a468fa4c9ac8e77f3dd5a882a3be7ecef7db6d",
    "message.job.fail": "278d105bece0f884b103388a3405a689964f95d1c76dea1be0e1cae2903d4189",
}


def test_message_bytes_are_pinned():
    assert {k: hashlib.sha256(v).hexdigest() for k, v in message_vectors().items()} == GOLDEN_SHA256


def test_protocol_doc_carries_every_message_vector():
    found = dict(re.findall(r"^(message\.[a-z_.]+): ([0-9a-f]+)$", DOCS.read_text(), flags=re.M))
    assert found == {k: v.hex() for k, v in message_vectors().items()}


@pytest.mark.parametrize("name", sorted(GOLDEN_SHA256))
def test_each_vector_decodes_as_its_protocol_reads_it_and_encodes_back(name):
    payload = message_vectors()[name]
    decode = decode_job if name.startswith("message.job.") else decode_negotiation
    msg = decode(payload)
    assert msg.TAG == name.removeprefix("message.") and msg.encode() == payload
