"""Settlement records: the per-second Receipt and the auditor's Statement.

Receipt n of an agreement carries cumulative figures (metered milliseconds, usage counters, amount),
so only the latest co-signed receipt matters for payment and nothing is ever summed from rounded
pieces; ``prev`` is the SHA-256 of receipt n-1's body (for n = 1: the agreement id), so the chain
proves order and completeness. The provider signs first (its claim), the buyer countersigns (its
debt); see p2p.envelope for what each signature covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from p2p.records import I64, U64, Digest, MaxLen, PublicKey, Record, ShortText, record, struct

RUNNING = "running"
FINAL = "final"
STATES = frozenset({RUNNING, FINAL})

# Why a job ended (the final receipt's ``reason``).
COMPLETED = "completed"
BUYER_CANCEL = "buyer_cancel"
OWNER_PREEMPT = "owner_preempt"
BUYER_UNRESPONSIVE = "buyer_unresponsive"
PROVIDER_FAULT = "provider_fault"
PROVIDER_SHUTDOWN = "provider_shutdown"
PROVIDER_RESTART = "provider_restart"
EXPIRED = "expired"
DEADLINE = "deadline"
KILLED_EXTERNALLY = "killed_externally"  # stopped or removed by someone else on the engine, not by the provider
REASONS = frozenset({COMPLETED, BUYER_CANCEL, OWNER_PREEMPT, BUYER_UNRESPONSIVE, PROVIDER_FAULT,
                     PROVIDER_SHUTDOWN, PROVIDER_RESTART, EXPIRED, DEADLINE, KILLED_EXTERNALLY})


@struct
@dataclass(frozen=True)
class Usage:
    """Cumulative usage evidence; billing uses ``Receipt.metered_ms`` (allocation time)."""

    cpu_core_ms: U64
    mem_peak_bytes: U64
    gpu_ms: U64
    gpu_mem_peak_bytes: U64
    gpu_sm_pct_ms: U64
    energy_mj: U64


ZERO_USAGE = Usage(0, 0, 0, 0, 0, 0)


@record("receipt", 1)
@dataclass(frozen=True)
class Receipt(Record):
    SIGNERS: ClassVar = (("provider", "provider"), ("buyer", "buyer"))

    agreement_id: Digest
    provider: PublicKey
    buyer: PublicKey
    seq: U64
    prev: Digest
    issued_at_ms: U64
    metered_ms: U64
    usage: Usage
    amount_micros: U64
    state: ShortText
    reason: ShortText | None
    exit_code: I64 | None
    output_digest: Digest | None


@struct
@dataclass(frozen=True)
class StatementEntry:
    agreement_id: Digest
    payer: PublicKey
    payee: PublicKey
    amount_micros: U64
    billed_ms: U64
    last_seq: U64
    last_receipt_id: Digest | None
    state: ShortText
    findings: U64


@record("statement", 1)
@dataclass(frozen=True)
class Statement(Record):
    """An auditor's signed summary of who owes whom, agreement by agreement."""

    SIGNERS: ClassVar = (("auditor", "auditor"),)
    MAX_BYTES: ClassVar[int] = 16 * 1024 * 1024

    auditor: PublicKey
    created_at_ms: U64
    entries: Annotated[tuple[StatementEntry, ...], MaxLen(100_000)]
