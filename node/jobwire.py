"""The messages of ``/suanli/job/1.0.0``: one stream per job, opened by the buyer after the agreement.

    buyer                                           provider
    start(agreement_id, input_bytes, image) ─────▶
                                         ◀───────── status("need_image") | status("starting") | fail
    chunk("image", ...)* end("image") ───────────▶  (only when asked for the image)
    chunk("inputs", ...)* end("inputs") ─────────▶
                                         ◀───────── status("running", started_at_ms)
                                         ◀───────── log(stream, data)*     (live, as the job prints)
                                         ◀───────── receipt(envelope)      (provider-signed, every interval)
    countersign(envelope) ───────────────────────▶  (the same receipt, countersigned)
                                         ◀───────── status("paused" | "resumed", ...)
    cancel() ────────────────────────────────────▶  (Ctrl-C)
                                         ◀───────── receipt(final envelope, output digest)
    countersign(final envelope) ─────────────────▶
                                         ◀───────── chunk("outputs", ...)* end("outputs", sha256)
                                                    (only once the final is countersigned)
                                         ◀───────── done(exit_code, ...)

Rule 1: every frame is one canonical record (p2p.records); chunks carry at most ``CHUNK_BYTES``.
Rule 2: declared sizes are enforced: a peer that sends more than it declared is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from p2p.records import I64, U64, Digest, MaxLen, Record, ShortText, decode_one_of, record

PROTOCOL_ID = "/suanli/job/1.0.0"
CHUNK_BYTES = 128 * 1024
MAX_FRAME_BYTES = CHUNK_BYTES + 4096
Envelope = Annotated[bytes, MaxLen(96 * 1024)]
Text = Annotated[str, MaxLen(2048)]


@record("job.start", 1)
@dataclass(frozen=True)
class Start(Record):
    agreement_id: Digest
    input_bytes: U64  # size of the inputs tar that follows (0: none)
    image_archive_bytes: U64  # size of the image archive the buyer can send if asked (0: none)


@record("job.chunk", 1)
@dataclass(frozen=True)
class Chunk(Record):
    kind: ShortText  # "image" | "inputs" | "outputs"
    data: Annotated[bytes, MaxLen(CHUNK_BYTES)]


@record("job.end", 1)
@dataclass(frozen=True)
class End(Record):
    kind: ShortText
    total_bytes: U64
    sha256: Digest


@record("job.status", 1)
@dataclass(frozen=True)
class Status(Record):
    phase: ShortText  # need_image | loading_image | starting | running | paused | resumed | stopping
    at_ms: U64
    detail: Text


@record("job.log", 1)
@dataclass(frozen=True)
class Log(Record):
    stream: ShortText  # stdout | stderr
    data: Annotated[bytes, MaxLen(CHUNK_BYTES)]


@record("job.receipt", 1)
@dataclass(frozen=True)
class ReceiptMsg(Record):
    receipt: Envelope


@record("job.countersign", 1)
@dataclass(frozen=True)
class Countersign(Record):
    receipt: Envelope


@record("job.cancel", 1)
@dataclass(frozen=True)
class Cancel(Record):
    reason: ShortText


@record("job.done", 1)
@dataclass(frozen=True)
class Done(Record):
    exit_code: I64
    oom_killed: bool
    timed_out: bool
    reason: ShortText
    output_bytes: U64


@record("job.fail", 1)
@dataclass(frozen=True)
class Fail(Record):
    reason: ShortText
    detail: Text


MESSAGES: dict[str, type[Record]] = {cls.TAG: cls for cls in (Start, Chunk, End, Status, Log, ReceiptMsg,
                                                               Countersign, Cancel, Done, Fail)}


def decode_message(payload: bytes) -> Record:
    """One job frame -> its message; CodecError for anything else."""
    return decode_one_of(payload, MESSAGES, MAX_FRAME_BYTES, "job")
