"""The messages of ``/suanli/negotiate/1.0.0``: one frame each (p2p.framing), one canonical record each.

Signed records travel inside as envelope bytes (``p2p.envelope``); everything else in a negotiation is
said on a Noise-authenticated stream, so the peer's identity is known without another signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from p2p.records import U64, Digest, MaxLen, Record, ShortText, decode_one_of, record

PROTOCOL_ID = "/suanli/negotiate/1.0.0"
Envelope = Annotated[bytes, MaxLen(96 * 1024)]


@record("negotiate.propose", 1)
@dataclass(frozen=True)
class Propose(Record):
    proposal: Envelope  # Signed[Proposal] bytes


@record("negotiate.agree", 1)
@dataclass(frozen=True)
class Agree(Record):
    agreement: Envelope  # Signed[Agreement] bytes, provider-signed: a firm bid until accept_by_ms


@record("negotiate.counter", 1)
@dataclass(frozen=True)
class Counter(Record):
    price_micros_per_s: U64  # what the provider would agree to for this request
    detail: Annotated[str, MaxLen(512)]


@record("negotiate.reject", 1)
@dataclass(frozen=True)
class Reject(Record):
    reason: ShortText  # one of market.negotiation.REJECT_REASONS
    detail: Annotated[str, MaxLen(512)]


@record("negotiate.accept", 1)
@dataclass(frozen=True)
class Accept(Record):
    agreement: Envelope  # the same agreement, countersigned by the buyer


@record("negotiate.confirm", 1)
@dataclass(frozen=True)
class Confirm(Record):
    agreement_id: Digest


MESSAGES: dict[str, type[Record]] = {cls.TAG: cls for cls in (Propose, Agree, Counter, Reject, Accept, Confirm)}
NAMES = {Propose: "propose", Agree: "agree", Counter: "counter", Reject: "reject", Accept: "accept",
         Confirm: "confirm"}


def decode_message(payload: bytes) -> Record:
    """One negotiation frame -> its message; CodecError for anything else."""
    return decode_one_of(payload, MESSAGES, 128 * 1024, "negotiation")
