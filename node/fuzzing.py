"""Every decoder of hostile bytes, with valid seeds, for the fuzzer (``p2p.fuzzing``; issue 13, H1).

Used by tests/p2p/test_fuzz_decoders.py (10,000 frames each per run) and bench/fuzz.py (100,000).
Rule: for any bytes, each decoder returns a value or raises what ``allowed`` names: CodecError or
SignatureError (both RemoteProtocolError) for bytes from a peer, UnusableInputError for a file. The
gossip validator's core (``OfferLedger.judge``) and the audit may raise nothing at all: they turn
every bad input into a verdict or a finding.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from p2p import codec
from p2p import job_wire as jobwire
from p2p import negotiate_wire as market_wire
from p2p.envelope import Signed, open_countersigned, open_signed, sign_record
from p2p.errors import RemoteProtocolError, UnusableInputError
from p2p.fuzzing import Target
from p2p.gossip import OfferLedger
from p2p.market_records import Agreement, Offer, Proposal
from p2p.receipt_records import Receipt, Statement, StatementEntry
from p2p.records import Record
from settlement.audit import audit, read_inputs
from settlement.bundle import decode_bundle, encode_bundle
from settlement.testing import key_from_label, make_chain

NOW_MS = 1_800_000_000_000
REMOTE = (RemoteProtocolError,)  # CodecError and SignatureError are its subclasses


def _judge(ledger: OfferLedger[Offer], publisher: bytes, data: bytes) -> Any:
    return ledger.judge(data, publisher, NOW_MS + 1000)


def _plain(value: Any, schema_checks: bool) -> bool:
    """Whether a decoded value holds only the codec's types (Rule 1 of p2p.codec): no ext, no
    timestamp, text keys. ``unpack_canonical`` leaves keys and floats to the schema that reads its
    result (records, bundles), so there bytes keys and floats are the schema's to refuse. Iterative:
    a decoded value may nest 1,000 deep."""
    scalars = (bool, int, str, bytes, float) if schema_checks else (bool, int, str, bytes)
    keys = (str, bytes) if schema_checks else (str,)
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or type(item) in scalars:
            continue
        if type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            if not all(type(k) in keys for k in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


def _checked(decode: Callable[[bytes], Any], schema_checks: bool, data: bytes) -> Any:
    value = decode(data)
    if not _plain(value, schema_checks):
        raise AssertionError(f"decoded a value outside the codec's types: {codec.preview(value)}")
    return value


def _countersigned(ours: dict[bytes, Signed[Receipt]], data: bytes) -> Any:
    return open_countersigned(data, ours)


def _audit_bytes(path: Path, data: bytes) -> Any:
    """The whole of ``suanli audit FILE`` but printing: read (UnusableInputError allowed), then audit
    (which must turn anything wrong inside the file into findings)."""
    path.write_bytes(data)
    return audit(read_inputs([path]))


@contextmanager
def decoder_targets() -> Iterator[list[Target]]:
    """Every decoder target; the bundle target writes its frames to one file in a temporary directory."""
    provider, buyer, auditor = key_from_label("provider"), key_from_label("buyer"), key_from_label("auditor")
    ev = make_chain(provider, buyer, 2)
    final = ev.receipts[-1]
    entry = StatementEntry(agreement_id=ev.agreement.record_id, payer=buyer.public, payee=provider.public,
                           amount_micros=final.record.amount_micros, billed_ms=2000, last_seq=2,
                           last_receipt_id=final.record_id, state="final:completed", findings=0)
    statement = sign_record(Statement(auditor=auditor.public, created_at_ms=NOW_MS + 100_000, entries=(entry,)),
                            auditor)
    signed: dict[str, tuple[type[Record], list[Any]]] = {
        "offer": (Offer, [ev.offer]), "proposal": (Proposal, [ev.proposal]),
        "agreement": (Agreement, [ev.agreement]), "receipt": (Receipt, ev.receipts),
        "statement": (Statement, [statement]),
    }
    targets: list[Target] = []
    for name, (cls, envs) in signed.items():
        targets.append(Target(f"{name}.decode", cls.decode, [e.body for e in envs], REMOTE))
    for name, (cls, envs) in signed.items():
        targets.append(Target(f"open_signed({name})", partial(open_signed, cls=cls),
                              [e.to_bytes() for e in envs], REMOTE))
    receipt_env = ev.receipts[0].to_bytes()
    digest = hashlib.sha256(b"x").digest()
    job_seeds = [jobwire.Start(ev.agreement.record_id, 10, 0), jobwire.Chunk("inputs", b"abc"),
                 jobwire.End("inputs", 3, digest), jobwire.Status("running", NOW_MS, ""),
                 jobwire.Log("stdout", b"hello\n"), jobwire.ReceiptMsg(receipt_env),
                 jobwire.Countersign(receipt_env), jobwire.Cancel("buyer_cancel"),
                 jobwire.Done(0, False, False, "completed", 3), jobwire.Fail("image", "no such image")]
    targets.append(Target("jobwire.decode_message", jobwire.decode_message, [m.encode() for m in job_seeds],
                          REMOTE))
    negotiation = [market_wire.Propose(ev.proposal.to_bytes()), market_wire.Agree(ev.agreement.to_bytes()),
                   market_wire.Counter(120, "dearer"), market_wire.Reject("price", "too low"),
                   market_wire.Accept(ev.agreement.to_bytes()), market_wire.Confirm(ev.agreement.record_id)]
    targets.append(Target("p2p.negotiate_wire.decode_message", market_wire.decode_message,
                          [m.encode() for m in negotiation], REMOTE))
    plain = [codec.pack({}), ev.offer.to_bytes(), codec.pack({"a": [1, "b", b"c", None, True]})]
    targets.append(Target("codec.unpack (frames)", partial(_checked, codec.unpack, False), plain, REMOTE))
    targets.append(Target("codec.unpack_canonical", partial(_checked, codec.unpack_canonical, True), plain,
                          REMOTE))
    # The provider's first look at a countersignature (node.provider_job): None for anything but one
    # of its receipts plus a valid buyer signature; it may raise nothing.
    mine = [Signed(body=r.body, record=r.record, sigs=r.sigs[:1]) for r in ev.receipts]
    targets.append(Target("open_countersigned", partial(_countersigned, {s.body: s for s in mine}),
                          [r.to_bytes() for r in ev.receipts], ()))
    ledger: OfferLedger[Offer] = OfferLedger(Offer)
    targets.append(Target("gossip OfferLedger.judge", partial(_judge, ledger, provider.public),
                          [ev.offer.to_bytes()], ()))
    targets.append(Target("bundle decode_bundle", decode_bundle, [encode_bundle([ev.stored()])],
                          (UnusableInputError,)))
    with tempfile.TemporaryDirectory(prefix="suanli-fuzz-") as tmp:
        bundle = Path(tmp) / "fuzz.bundle"
        targets.append(Target("audit (bundle file)", partial(_audit_bytes, bundle), [encode_bundle([ev.stored()])],
                              (UnusableInputError,)))
        yield targets


def target_names() -> list[str]:
    with decoder_targets() as targets:
        return [t.name for t in targets]


__all__ = ["decoder_targets", "target_names"]
