"""Test vectors of the stream messages (issue 14, item 6): one instance of every message of
``/suanli/negotiate/1.0.0`` (p2p.negotiate_wire) and ``/suanli/job/1.0.0`` (p2p.job_wire), as the canonical bytes
a frame carries. docs/PROTOCOL.md lists them ("Message vectors"); tests/p2p/test_message_vectors.py pins
their hashes, so a change to a message's bytes is a visible protocol change (bump its version) or a bug.

The envelopes inside ``propose``, ``agree``, ``accept``, ``receipt`` and ``countersign`` are the record
vectors' own (settlement.testing.protocol_vectors), so every byte is derived from fixed keys and values.
"""

from __future__ import annotations

import hashlib

from p2p.envelope import Signed
from p2p.job_wire import Cancel, Chunk, Countersign, Done, End, Fail, HaveLayers, Log, ReceiptMsg, Start, Status
from p2p.negotiate_wire import Accept, Agree, Confirm, Counter, Propose, Reject
from settlement.testing import key_from_label, make_chain


def message_vectors() -> dict[str, bytes]:
    """``name -> canonical bytes`` for every stream message, in protocol order."""
    provider, buyer = key_from_label("provider"), key_from_label("buyer")
    ev = make_chain(provider, buyer, 2)
    bid = Signed(ev.agreement.body, ev.agreement.record, ev.agreement.sigs[:1])
    agreement_id = ev.agreement.record_id
    receipt = ev.receipts[0]
    provider_only = Signed(receipt.body, receipt.record, receipt.sigs[:1])
    layer = hashlib.sha256(b"layer").digest()
    messages = {
        "negotiate.propose": Propose(ev.proposal.to_bytes()),
        "negotiate.counter": Counter(120, "price_too_low: this allocation costs 120 micro-credits/s"),
        "negotiate.reject": Reject("no_capacity", "free now: 0 millicores, 0 MiB memory, 0 MiB disk"),
        "negotiate.agree": Agree(bid.to_bytes()),
        "negotiate.accept": Accept(ev.agreement.to_bytes()),
        "negotiate.confirm": Confirm(agreement_id),
        "job.start": Start(agreement_id, 10240, 2_000_000, (layer,)),
        "job.have_layers": HaveLayers((layer,)),
        "job.status": Status("need_inputs", ev.agreement.record.created_at_ms + 100, ""),
        "job.chunk": Chunk("inputs", b"\x00" * 16),
        "job.end": End("inputs", 16, hashlib.sha256(b"\x00" * 16).digest()),
        "job.log": Log("stdout", b"hello\n"),
        "job.receipt": ReceiptMsg(provider_only.to_bytes()),
        "job.countersign": Countersign(receipt.to_bytes()),
        "job.cancel": Cancel("buyer_cancel"),
        "job.done": Done(0, False, False, "completed", 0),
        "job.fail": Fail("image_missing", "image sha256:... is not on this provider and no archive was offered"),
    }
    return {f"message.{name}": msg.encode() for name, msg in messages.items()}
