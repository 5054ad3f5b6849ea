"""The stream messages' golden bytes (issue 14, item 6): docs/PROTOCOL.md "Message vectors"."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from market.wire import decode_message as decode_negotiation
from node.jobwire import decode_message as decode_job
from node.wire_vectors import message_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Pinned: a change here is a protocol break (bump the message's version) or a mistake.
GOLDEN_SHA256 = {
    "message.negotiate.propose": "73e15605a3c9aec71aef6f8fdc2de8c5160559b03ffc93cabdf67896acc6a9c3",
    "message.negotiate.counter": "14eb480a7ae48bc4fd8fefe399af026d79ee92fd355a5741d7b7cd82df784502",
    "message.negotiate.reject": "23990c5e9eccb2f9c00ee5511fb16955e5c22eb81de894c082a1e4635b778066",
    "message.negotiate.agree": "c86f9eec799a139871a85301f2f3adbb0d49174e8a71af0fffb97c9a6cac603f",
    "message.negotiate.accept": "68fe442f23d80d9811f06f1007f76fa0e05263adb4c7a15d18841bcbffdf121e",
    "message.negotiate.confirm": "40fe80b82324f301ed495c86ba727b6193bfaeff5225f27ca54fb0e3bf850d35",
    "message.job.start": "6fc982cd467232803da21fd76c7ba498a28fb26cd4dc2afef6fb49be581c3792",
    "message.job.have_layers": "72086ced6282e8bfb104077911596993cb328d00788f71d01198a0e6a2026471",
    "message.job.status": "ade2af5ab97d10596e38da08d2c3ed94bde9936f81859e31c922b8c61be96c32",
    "message.job.chunk": "1c52fb3a65bd1d8cc81dee8c742748975ddf7492e4b2965f537f26e1a1fe941c",
    "message.job.end": "3e51600ef0f4ee0d76202636fd3944fa0abd7eb88d723d0faf043e3b39b8a5e9",
    "message.job.log": "2bdf65d17188b759af6ad29f436ecbdeb054e8878cd71218a38652bbdf87ea76",
    "message.job.receipt": "915f5d154ba51f3fa85f1e8e62b1733ebbf1daa94f87132f9b85c7a5246c2320",
    "message.job.countersign": "fc4be9a98258d99c73f0b31fa6fcab316619c05746d8aacd8f56d87fba4809c2",
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
