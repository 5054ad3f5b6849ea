"""The messages of ``/suanli/job/1.0.0``: one stream per job, opened by the buyer after the agreement.

    buyer                                           provider
    start(agreement_id, input_bytes, image, layers) ▶
                                         ◀───────── have_layers(layers)      (only when it holds some)
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
Rule 3 (issue 19): layer-aware shipping. A ``start`` names the layers of the buyer's archive; a provider
that lacks the image but holds some of those layers says which in ``have_layers`` before its
``need_image``, and the buyer then sends the archive without them (at most the declared size). The
provider rebuilds the whole image from what arrived and its layer store, and checks every digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from p2p.records import I64, U64, Digest, MaxLen, Record, ShortText, decode_one_of, record

PROTOCOL_ID = "/suanli/job/1.0.0"
CHUNK_BYTES = 128 * 1024
MAX_FRAME_BYTES = CHUNK_BYTES + 4096
MAX_LAYERS = 128  # layers in one image archive (sandbox.archive refuses more)
Envelope = Annotated[bytes, MaxLen(96 * 1024)]
Text = Annotated[str, MaxLen(2048)]


@record("job.start", 2)
@dataclass(frozen=True)
class Start(Record):
    """Version 2 (issue 19) added ``image_layers``: the layers (diff ids) of the archive the buyer can send."""

    agreement_id: Digest
    input_bytes: U64  # size of the inputs tar that follows (0: none)
    image_archive_bytes: U64  # size of the image archive the buyer can send if asked (0: none)
    image_layers: Annotated[tuple[Digest, ...], MaxLen(MAX_LAYERS)] = ()


def start_layers(diff_ids: Sequence[str]) -> tuple[bytes, ...]:
    """An archive's layers (``sha256:<hex>`` diff ids) as ``start`` names them (Rule 3); none when there are
    more than it carries (the archive then travels whole)."""
    if len(diff_ids) > MAX_LAYERS:
        return ()
    return tuple(bytes.fromhex(d.removeprefix("sha256:")) for d in diff_ids)


@record("job.have_layers", 1)
@dataclass(frozen=True)
class HaveLayers(Record):
    """The provider already holds these layers of the buyer's archive (Rule 3): send the archive without them."""

    layers: Annotated[tuple[Digest, ...], MaxLen(MAX_LAYERS)]


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


MESSAGES: dict[str, type[Record]] = {cls.TAG: cls for cls in (Start, HaveLayers, Chunk, End, Status, Log, ReceiptMsg,
                                                               Countersign, Cancel, Done, Fail)}


def decode_message(payload: bytes) -> Record:
    """One job frame -> its message; CodecError for anything else."""
    return decode_one_of(payload, MESSAGES, MAX_FRAME_BYTES, "job")
