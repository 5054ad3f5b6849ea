"""The job protocol's state table (pure), shared by both roles of ``/suanli/job/1.0.0`` (p2p.job_wire).

The sessions (node.jobsession_provider, node.jobsession_buyer) hold the rules of one job; the trio
shells (node.provider_job, node.buyer_job) only perform the actions they return against the runner,
the store and the stream, and feed them events: a message received, a meter sample, the container's
exit, a stop requested, a transfer done, and the owner's return (node.owner_job). Time is passed in.

    provider: start -start-> preparing -running-> running -final-> closing -done-> done
              preparing -fail-> failed -final-> closed         (the job could not start; nothing claimed)
              preparing -final-> closing                       (the container failed as it started)
    buyer:    start -start-> preparing -running-> running -final-> closing -done-> done
              preparing -fail-> closed

Rule 1: ``MOVES`` is the whole machine: (role, phase, direction, message kind) -> next phase, looked
up by p2p.moves.next_phase as market.negotiation's table is. A move not in the table is
LocalProtocolError when we try it (our bug) and RemoteProtocolError when the peer does. A message's kind
is its jobwire type, except that a receipt
is ``final`` when it ends the chain, a ``status("running")`` is ``running`` (the container started),
and chunks and ends are named by what they carry (``image``, ``inputs``, ``outputs``: one transfer).
Rule 2: pausing is a set of reasons (``COUNTERSIGNATURE_LATE``, ``OWNER_RETURNED``): the container is
paused when the first reason arrives and resumed only when the last one is gone, so the exposure
guard's RESUME never undoes another reason's pause (issue 14, item 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p.envelope import Signed
from p2p.errors import SuanliError
from p2p.job_wire import Cancel, Chunk, Countersign, Done, End, Fail, HaveLayers, Log, ReceiptMsg, Start, Status
from p2p.moves import RECV as RECV  # re-exported: the roles' sessions and tests use them from here
from p2p.moves import SEND as SEND
from p2p.moves import next_phase
from p2p.receipt_records import Receipt
from p2p.records import Record

PROVIDER, BUYER = "provider", "buyer"

# Message kinds (Rule 1).
START, IMAGE, INPUTS, OUTPUTS = "start", "image", "inputs", "outputs"
STATUS, RUNNING, LOG, RECEIPT, FINAL = "status", "running", "log", "receipt", "final"
COUNTERSIGN, CANCEL, DONE, FAIL = "countersign", "cancel", "done", "fail"
HAVE_LAYERS = "have_layers"  # p2p.job_wire Rule 3: before need_image, the layers the provider holds
KINDS = (START, IMAGE, INPUTS, OUTPUTS, STATUS, RUNNING, LOG, RECEIPT, FINAL, COUNTERSIGN, CANCEL, DONE, FAIL,
         HAVE_LAYERS)

# Reasons to pause (Rule 2).
COUNTERSIGNATURE_LATE = "countersignature_late"  # the exposure guard (settlement.session Rule 2)
OWNER_RETURNED = "owner_returned"  # the machine's owner is back (node.owner_watch, node.owner_job)
PAUSE_DETAIL = {COUNTERSIGNATURE_LATE: "waiting for your countersignature",  # the job.status("paused") detail
                OWNER_RETURNED: "the machine's owner is using it"}

MOVES: dict[tuple[str, str, str, str], str] = {
    # The provider. A buyer's cancel during an upload is not in the table: the upload fails.
    (PROVIDER, "start", RECV, START): "preparing",
    (PROVIDER, "preparing", SEND, STATUS): "preparing",  # need_image, pulling_image, loading_image, need_inputs, ...
    (PROVIDER, "preparing", SEND, HAVE_LAYERS): "preparing",
    (PROVIDER, "preparing", RECV, IMAGE): "preparing",
    (PROVIDER, "preparing", RECV, INPUTS): "preparing",
    (PROVIDER, "preparing", SEND, FAIL): "failed",
    (PROVIDER, "failed", SEND, FINAL): "closed",
    (PROVIDER, "preparing", SEND, RUNNING): "running",
    (PROVIDER, "preparing", SEND, FINAL): "closing",
    (PROVIDER, "running", SEND, STATUS): "running",  # paused, resumed, outputs_skipped, logs_dropped
    (PROVIDER, "running", SEND, LOG): "running",
    (PROVIDER, "running", SEND, RECEIPT): "running",
    (PROVIDER, "running", RECV, COUNTERSIGN): "running",
    (PROVIDER, "running", RECV, CANCEL): "running",
    (PROVIDER, "running", SEND, FINAL): "closing",
    (PROVIDER, "closing", RECV, COUNTERSIGN): "closing",
    (PROVIDER, "closing", RECV, CANCEL): "closing",
    (PROVIDER, "closing", SEND, OUTPUTS): "closing",  # only once the final is countersigned (Rule 5)
    (PROVIDER, "closing", SEND, DONE): "done",
    (PROVIDER, "done", RECV, COUNTERSIGN): "done",  # late, while the stream drains
    (PROVIDER, "done", RECV, CANCEL): "done",
    # The buyer. Logs may trail the final receipt: the provider's outbox sends control messages first.
    (BUYER, "start", SEND, START): "preparing",
    (BUYER, "preparing", RECV, STATUS): "preparing",
    (BUYER, "preparing", RECV, HAVE_LAYERS): "preparing",
    (BUYER, "preparing", SEND, IMAGE): "preparing",
    (BUYER, "preparing", SEND, INPUTS): "preparing",
    (BUYER, "preparing", SEND, CANCEL): "preparing",
    (BUYER, "preparing", RECV, FAIL): "closed",
    (BUYER, "preparing", RECV, RUNNING): "running",
    (BUYER, "preparing", RECV, FINAL): "closing",
    (BUYER, "running", RECV, STATUS): "running",
    (BUYER, "running", RECV, LOG): "running",
    (BUYER, "running", RECV, RECEIPT): "running",
    (BUYER, "running", SEND, COUNTERSIGN): "running",
    (BUYER, "running", SEND, CANCEL): "running",
    (BUYER, "running", RECV, FINAL): "closing",
    (BUYER, "closing", SEND, COUNTERSIGN): "closing",
    (BUYER, "closing", SEND, CANCEL): "closing",
    (BUYER, "closing", RECV, LOG): "closing",
    (BUYER, "closing", RECV, OUTPUTS): "closing",
    (BUYER, "closing", RECV, DONE): "done",
}
TERMINAL = frozenset({"done", "closed"})


def kind_of(msg: Record, receipt: Receipt | None = None) -> str:
    """The message's kind in ``MOVES`` (Rule 1); ``receipt``: the record inside a ``ReceiptMsg``."""
    if isinstance(msg, (Chunk, End)):
        return msg.kind if msg.kind in (IMAGE, INPUTS, OUTPUTS) else f"{msg.kind}?"
    if isinstance(msg, Status):
        return RUNNING if msg.phase == "running" else STATUS
    if isinstance(msg, ReceiptMsg):
        return FINAL if receipt is not None and receipt.state == "final" else RECEIPT
    return _KIND_OF_TYPE[type(msg)]


_KIND_OF_TYPE: dict[type[Record], str] = {Start: START, Log: LOG, Countersign: COUNTERSIGN, Cancel: CANCEL,
                                          Done: DONE, Fail: FAIL, HaveLayers: HAVE_LAYERS}


@dataclass
class JobMachine:
    """One role's phase in the table (Rule 1)."""

    role: str
    phase: str = "start"

    def move(self, direction: str, kind: str) -> str:
        self.phase = next_phase(MOVES, self.role, self.phase, direction, kind)
        return self.phase

    def check(self, direction: str, kind: str) -> None:
        """The errors of ``move`` (Rule 1), without moving: for a message built now and sent later."""
        next_phase(MOVES, self.role, self.phase, direction, kind)

    def allows(self, direction: str, kind: str) -> bool:
        return (self.role, self.phase, direction, kind) in MOVES

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL


# Actions out: the shells perform them in order.
@dataclass(frozen=True)
class Send:
    """Write ``message`` to the stream (the provider: through its outbox)."""

    message: Record


@dataclass(frozen=True)
class Store:
    """Make ``receipt`` durable; tell the session (``stored``) before anything depends on it."""

    receipt: Signed[Receipt]


@dataclass(frozen=True)
class Pause:
    """Freeze the container (the first reason to pause arrived)."""

    reason: str


@dataclass(frozen=True)
class Resume:
    """Thaw the container (the last reason to pause is gone)."""


@dataclass(frozen=True)
class Stop:
    """Stop the container gracefully (SIGTERM, then the stop grace); ``reason`` ends the chain."""

    reason: str


@dataclass(frozen=True)
class Kill:
    """Kill the container at once, where it is (a paused job is never thawed to stop)."""

    why: str


@dataclass(frozen=True)
class Upload:
    """The buyer sends its ``kind`` blob (``image`` or ``inputs``), then reports ``transfer_done``; an image
    archive goes without the layers in ``omit`` (the provider holds them: p2p.job_wire Rule 3)."""

    kind: str
    omit: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Abort:
    """End the job with ``error`` (after the actions before it)."""

    error: SuanliError


@dataclass(frozen=True)
class Finish:
    """The job is over for this side: ``reason`` is the chain's final reason."""

    reason: str


Action = Send | Store | Pause | Resume | Stop | Kill | Upload | Abort | Finish
