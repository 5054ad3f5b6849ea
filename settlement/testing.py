"""Build valid, fully signed evidence for tests and benchmarks (as trio.testing ships with trio).

``make_chain`` plays both parties honestly: an offer, a proposal, an agreement signed by both, and
``n`` receipts one ``interval_ms`` apart, each countersigned, the last one final. Tests then break
one thing at a time; benchmarks generate many.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from p2p.envelope import Signed, countersign, sign_record
from p2p.identity import NodeKey
from p2p.market_records import (
    Agreement,
    Capacity,
    JobSpec,
    Limits,
    Offer,
    Prices,
    Proposal,
    ReceiptTerms,
    ResourceRequest,
)
from p2p.receipt_records import COMPLETED, FINAL, RUNNING, Receipt, Usage
from settlement.billing import amount_due
from settlement.store import StoredChain

DEMO_IMAGE = "sha256:" + "ab" * 32
TERMS = ReceiptTerms(interval_ms=1000, countersign_timeout_ms=3000, grace_ms=5000, exposure_cap_micros=5_000)


def key_from_label(label: str) -> NodeKey:
    """A deterministic key for tests and test vectors (never for real use)."""
    return NodeKey.from_seed(hashlib.sha256(label.encode()).digest())


@dataclass(frozen=True)
class Evidence:
    offer: Signed[Offer]
    proposal: Signed[Proposal]
    agreement: Signed[Agreement]
    receipts: list[Signed[Receipt]]

    def stored(self) -> StoredChain:
        return StoredChain(agreement=self.agreement.to_wire(), offer=self.offer.to_wire(),
                           proposal=self.proposal.to_wire(), receipts=[r.to_wire() for r in self.receipts])


def make_offer(provider: NodeKey, now_ms: int = 1_800_000_000_000, seq: int = 1,
               terms: ReceiptTerms = TERMS) -> Offer:
    cap = Capacity(gpus=(), cpu_millis=2000, memory_mib=4096, disk_mib=8192)
    return Offer(provider=provider.public, addrs=("/ip4/127.0.0.1/tcp/4001",), seq=seq, created_at_ms=now_ms,
                 expires_at_ms=now_ms + 60_000, capacity=cap, free=cap,
                 prices=Prices(gpu_micros_per_s={}, cpu_core_micros_per_s=50, memory_gib_micros_per_s=10),
                 limits=Limits(max_duration_s=3600, max_concurrent_jobs=4, allowed_images=()), terms=terms)


def make_agreement(provider: NodeKey, buyer: NodeKey, now_ms: int = 1_800_000_000_000, price: int = 110,
                   nonce: bytes = b"\x07" * 16, terms: ReceiptTerms = TERMS
                   ) -> tuple[Signed[Offer], Signed[Proposal], Signed[Agreement]]:
    offer = sign_record(make_offer(provider, now_ms, terms=terms), provider)
    job = JobSpec(image=DEMO_IMAGE, image_archive_sha256=None, command=("sh", "-c", "echo hello"), env={},
                  input_sha256=None)
    resources = ResourceRequest(gpus=0, gpu_model=None, min_gpu_memory_mib=0, min_compute_capability=None,
                                cpu_millis=1000, memory_mib=1024)
    proposal = sign_record(Proposal(
        buyer=buyer.public, provider=provider.public, offer_id=offer.record_id, job=job, resources=resources,
        max_price_micros_per_s=price, max_duration_ms=600_000, terms=terms, nonce=nonce,
        created_at_ms=now_ms + 10, expires_at_ms=now_ms + 10_010), buyer)
    agreement = sign_record(Agreement(
        provider=provider.public, buyer=buyer.public, offer_id=offer.record_id, proposal_id=proposal.record_id,
        job=job, resources=resources, price_micros_per_s=price, max_duration_ms=600_000, terms=terms,
        created_at_ms=now_ms + 20, accept_by_ms=now_ms + 5_020), provider)
    return offer, proposal, countersign(agreement, buyer)


def next_receipt(agreement: Signed[Agreement], prev: Receipt | None, prev_id: bytes, *, step_ms: int = 1000,
                 final: bool = False, reason: str = COMPLETED, exit_code: int = 0) -> Receipt:
    ag = agreement.record
    seq = 1 if prev is None else prev.seq + 1
    metered = (prev.metered_ms if prev else 0) + step_ms
    issued = ag.created_at_ms + 200 + metered
    usage = Usage(cpu_core_ms=metered * 9 // 10, mem_peak_bytes=32 << 20, gpu_ms=0, gpu_mem_peak_bytes=0,
                  gpu_sm_pct_ms=0, energy_mj=0)
    return Receipt(
        agreement_id=agreement.record_id, provider=ag.provider, buyer=ag.buyer, seq=seq, prev=prev_id,
        issued_at_ms=issued, metered_ms=metered, usage=usage, amount_micros=amount_due(metered, ag.price_micros_per_s),
        state=FINAL if final else RUNNING, reason=reason if final else None,
        exit_code=exit_code if final else None, output_digest=hashlib.sha256(b"out").digest() if final else None)


def make_chain(provider: NodeKey, buyer: NodeKey, n: int, *, now_ms: int = 1_800_000_000_000, final: bool = True,
               nonce: bytes = b"\x07" * 16) -> Evidence:
    offer, proposal, agreement = make_agreement(provider, buyer, now_ms, nonce=nonce)
    receipts: list[Signed[Receipt]] = []
    prev: Receipt | None = None
    prev_id = agreement.record_id
    for i in range(n):
        r = next_receipt(agreement, prev, prev_id, final=final and i == n - 1)
        signed = countersign(sign_record(r, provider), buyer)
        receipts.append(signed)
        prev, prev_id = r, signed.record_id
    return Evidence(offer, proposal, agreement, receipts)


def write_store(path: Path, ev: Evidence) -> Path:
    """A node database at ``path`` holding ``ev`` (offer, proposal, agreement, receipts), as a node
    would have stored it; returns ``path``."""
    from settlement.store import Store

    with Store(path) as store:
        store.put_offer(ev.offer)
        store.put_proposal(ev.proposal)
        store.put_agreement(ev.agreement)
        for r in ev.receipts:
            store.append_receipt(r)
    return path


def resign(record: Receipt, provider: NodeKey, buyer: NodeKey | None) -> Signed[Receipt]:
    """Sign a (possibly altered) receipt as a dishonest pair of parties would."""
    signed = sign_record(record, provider)
    return countersign(signed, buyer) if buyer is not None else signed


__all__ = ["Evidence", "key_from_label", "make_agreement", "make_chain", "make_offer", "next_receipt", "replace",
           "resign"]


def protocol_vectors() -> dict[str, bytes]:
    """The test vectors of docs/PROTOCOL.md: one instance of every record, as canonical bytes and as a
    signed envelope. Keys come from ``key_from_label``; Ed25519 signing is deterministic."""
    from p2p.receipt_records import Statement, StatementEntry

    provider, buyer, auditor = key_from_label("provider"), key_from_label("buyer"), key_from_label("auditor")
    ev = make_chain(provider, buyer, 2)
    report_entry = StatementEntry(agreement_id=ev.agreement.record_id, payer=buyer.public, payee=provider.public,
                                  amount_micros=ev.receipts[-1].record.amount_micros, billed_ms=2000, last_seq=2,
                                  last_receipt_id=ev.receipts[-1].record_id, state="final:completed", findings=0)
    statement = sign_record(Statement(auditor=auditor.public, created_at_ms=1_800_000_100_000,
                                      entries=(report_entry,)), auditor)
    out: dict[str, bytes] = {}
    for name, signed in (("offer", ev.offer), ("proposal", ev.proposal), ("agreement", ev.agreement),
                         ("receipt", ev.receipts[0]), ("final_receipt", ev.receipts[1]), ("statement", statement)):
        out[f"{name}.body"] = signed.body
        out[f"{name}.id"] = signed.record_id
        out[f"{name}.envelope"] = signed.to_bytes()
    for label, key in (("provider", provider), ("buyer", buyer), ("auditor", auditor)):
        out[f"key.{label}.seed"] = key.seed
        out[f"key.{label}.public"] = key.public
    return out


def vector_fields() -> str:
    """The field values of each test vector's body, one ``name.field = value`` line each (nested maps
    flattened with dots; ``bin`` as hex, text quoted), so that a reader can build a body from scratch."""
    from p2p.codec import unpack

    vectors = protocol_vectors()
    lines = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            if not value:
                lines.append(f"{prefix} = {{}}")
            for key in sorted(value):
                walk(f"{prefix}.{key}", value[key])
        elif isinstance(value, list):
            lines.append(f"{prefix} = [" + ", ".join(_scalar(v) for v in value) + "]")
        else:
            lines.append(f"{prefix} = {_scalar(value)}")

    for name in ("offer", "proposal", "agreement", "receipt", "final_receipt", "statement"):
        walk(name, unpack(vectors[f"{name}.body"], 1 << 20))
    return "\n".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, bytes):
        return f"bin {value.hex()}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in sorted(value.items())) + "}"
    if value is None:
        return "nil"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


NEGATIVE = {  # name -> (what is changed, the field of the vectors' bundle it replaces, the finding)
    "negative.offer": ("the offer envelope with the last bit of its signature flipped", "offer",
                       "offer_signature"),
    "negative.proposal": ("the proposal with max_price_micros_per_s 100 (below the agreed 110), re-signed by "
                          "the buyer", "proposal", "origin_mismatch"),
    "negative.agreement": ("the agreement envelope without the buyer's countersignature", "agreement",
                           "agreement_not_countersigned"),
    "negative.receipt": ("receipt 2 with amount_micros 221 (110 x 2000 ms / 1000 = 220), re-signed by both",
                         "receipts", "wrong_amount"),
    "negative.statement": ("the statement with its entry's amount_micros 221, re-signed by the auditor",
                           "statement", "entry not given by the evidence"),
}


def negative_vectors() -> dict[str, bytes]:
    """One wrong instance of every record type (``NEGATIVE``): name -> the changed envelope's bytes.
    Put into the vectors' bundle in place of the field named (a receipt replaces receipt 2; a statement
    is checked against the vectors' bundle), each gives exactly the one finding named."""
    from p2p.envelope import Signed
    from p2p.receipt_records import Statement, StatementEntry

    provider, buyer, auditor = key_from_label("provider"), key_from_label("buyer"), key_from_label("auditor")
    ev = make_chain(provider, buyer, 2)
    bad_offer_sig = ev.offer.sigs[0][:-1] + bytes([ev.offer.sigs[0][-1] ^ 1])
    r2 = ev.receipts[1].record
    entry = StatementEntry(agreement_id=ev.agreement.record_id, payer=buyer.public, payee=provider.public,
                           amount_micros=r2.amount_micros + 1, billed_ms=2000, last_seq=2,
                           last_receipt_id=ev.receipts[1].record_id, state="final:completed", findings=0)
    return {
        "negative.offer": Signed(ev.offer.body, ev.offer.record, (bad_offer_sig,)).to_bytes(),
        "negative.proposal": sign_record(replace(ev.proposal.record, max_price_micros_per_s=100), buyer).to_bytes(),
        "negative.agreement": Signed(ev.agreement.body, ev.agreement.record, ev.agreement.sigs[:1]).to_bytes(),
        "negative.receipt": resign(replace(r2, amount_micros=r2.amount_micros + 1), provider, buyer).to_bytes(),
        "negative.statement": sign_record(Statement(auditor=auditor.public, created_at_ms=1_800_000_100_000,
                                                    entries=(entry,)), auditor).to_bytes(),
    }
