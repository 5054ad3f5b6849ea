"""The offline audit's fast paths: the same findings as one receipt at a time, the collector's state
kept, and inputs read whole however they arrive."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import settlement.audit as audit_module
from p2p.errors import UnusableInputError
from p2p.receipt_records import Receipt
from settlement.audit import ChainJob, _decode, audit, audit_chain, read_inputs
from settlement.bundle import encode_bundle
from settlement.testing import key_from_label, make_chain

P, B = key_from_label("provider"), key_from_label("buyer")


def _job(receipts: list[dict]) -> ChainJob:
    ev = make_chain(P, B, 1)
    return ChainJob(ev.agreement.record_id, agreements=[ev.agreement.to_wire()], receipts=[receipts],
                    sources=["one.bundle"])


def test_malformed_receipts_of_one_input_are_each_reported_in_order():
    envelopes = [r.to_wire() for r in make_chain(P, B, 5).receipts]
    envelopes[1] = dict(envelopes[1], sigs=[b"x" * 63])
    envelopes[3] = dict(envelopes[3], body=envelopes[3]["body"] + b"\0")
    envelopes[4] = {"sigs": envelopes[4]["sigs"], "body": envelopes[4]["body"]}
    findings = audit_chain(_job(envelopes)).report.findings
    expected = [problem for problem in (_decode(e, Receipt, "receipt")[1] for e in envelopes) if problem]
    assert [f for f in findings if f.rule == "malformed"] == expected and len(expected) == 3
    assert [f.detail for f in expected] == ["receipt: receipt: a signature is not 64 bytes",
                                            "receipt: trailing bytes after the record",
                                            "receipt: not a signed receipt envelope"]
    assert findings[: len(expected)] == expected  # before what the chain check says of the rest


def test_the_collector_is_paused_while_auditing_and_left_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "one.bundle"
    path.write_bytes(encode_bundle([make_chain(P, B, 3).stored()]))
    seen = []
    verify_chain = audit_module.verify_chain
    monkeypatch.setattr(audit_module, "verify_chain", lambda *a: seen.append(gc.isenabled()) or verify_chain(*a))
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            results = audit(read_inputs([path]))
            assert results[0].report.ok and gc.isenabled() is enabled
            assert audit_chain(read_inputs([path])[0]).report.ok and gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert seen == [False] * 4


def test_an_input_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    """Issue 13, L2 (this replaces reading a FIFO whole): a FIFO, a device or a directory is refused
    before a byte is read, and opening a FIFO nobody writes to does not block."""
    fifo = tmp_path / "pipe.bundle"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(UnusableInputError, match="not a regular file|is a directory"):
            read_inputs([path])


@pytest.mark.parametrize("size", [0, 1, 16])
def test_short_files_are_still_sniffed(tmp_path, size):
    path = tmp_path / "short.bundle"
    path.write_bytes(b"\x80" * size)
    with pytest.raises(UnusableInputError):
        read_inputs([path])


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_bundle_whose_version_only_equals_1_is_unusable(tmp_path, version):
    import msgpack

    ev = make_chain(key_from_label("provider"), key_from_label("buyer"), 2)
    obj = msgpack.unpackb(encode_bundle([ev.stored()]))
    obj["v"] = version
    path = tmp_path / "odd.bundle"
    path.write_bytes(msgpack.packb(obj, use_bin_type=True))
    with pytest.raises(UnusableInputError, match="version"):
        read_inputs([path])
