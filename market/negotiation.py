"""Negotiation (pure): the state machine of one deal, and the checks each side makes.

One negotiation is one ``/suanli/negotiate/1.0.0`` stream. Messages (p2p.negotiate_wire): the buyer sends
``propose`` (a signed Proposal) and ``accept`` (the countersigned Agreement); the provider answers
``agree`` (an Agreement it signed: a firm bid until ``accept_by_ms``), ``counter`` (its terms, for
example its price), ``reject`` (a machine-readable reason) and finally ``confirm``.

    buyer:    start -propose-> proposed -agree-> agreed -accept-> accepted -confirm-> done
                               proposed -counter-> countered -propose-> proposed   (bounded rounds)
                               proposed|accepted -reject-> closed
    provider: start -propose-> deciding -agree-> offered -accept-> accepting -confirm-> done
                               deciding -counter-> countered -propose-> deciding
                               deciding|accepting -reject-> closed

Rule 1: ``MOVES`` is the whole machine: (role, phase, direction, message) -> next phase, looked up by
p2p.moves.next_phase (as node.jobsession's table is). A move not in the table is LocalProtocolError
when we try it (our bug) and RemoteProtocolError when the peer does.
Rule 2: at most ``MAX_ROUNDS`` proposals per stream.
Rule 3 (issue 13 L7): one proposal gets at most one agreement. The provider remembers the id of every
proposal it bid on (``ProposalMemory``) until that proposal expires, and refuses it again with
``duplicate_proposal``; a bid the buyer never countersigned is forgotten, so the buyer may retry it.
A proposal must expire within ``MAX_PROPOSAL_LIFETIME_MS``, so what is remembered is bounded in time.
Rule 4 (issue 19): a job's image is a pinned local id ``sha256:<64 hex>`` or a registry image pinned by
its manifest digest ``REGISTRY/REPO@sha256:<64 hex>``; anything else (a tag) is ``bad_proposal``. An
offer's ``allowed_images`` lists digests; a registry image is allowed when its digest is listed. For a
registry image the provider's agreement names the manifest it will pull (``image_manifest``: the named
digest itself, or with ``image_platform`` set, one platform's manifest from the named index); for a
local id both are empty. Whether the provider may reach that registry and hold that image is its own
policy, checked before it bids (node.jobimages), refused with the reasons below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.market_records import Agreement, Offer, Proposal
from p2p.moves import RECV as RECV  # re-exported: the roles' sessions and tests use them from here
from p2p.moves import SEND as SEND
from p2p.moves import next_phase

BUYER, PROVIDER = "buyer", "provider"
MAX_ROUNDS = 3

MOVES: dict[tuple[str, str, str, str], str] = {
    (BUYER, "start", SEND, "propose"): "proposed",
    (BUYER, "proposed", RECV, "agree"): "agreed",
    (BUYER, "proposed", RECV, "counter"): "countered",
    (BUYER, "proposed", RECV, "reject"): "closed",
    (BUYER, "countered", SEND, "propose"): "proposed",
    (BUYER, "agreed", SEND, "accept"): "accepted",
    (BUYER, "accepted", RECV, "confirm"): "done",
    (BUYER, "accepted", RECV, "reject"): "closed",
    (PROVIDER, "start", RECV, "propose"): "deciding",
    (PROVIDER, "deciding", SEND, "agree"): "offered",
    (PROVIDER, "deciding", SEND, "counter"): "countered",
    (PROVIDER, "deciding", SEND, "reject"): "closed",
    (PROVIDER, "countered", RECV, "propose"): "deciding",
    (PROVIDER, "offered", RECV, "accept"): "accepting",
    (PROVIDER, "accepting", SEND, "confirm"): "done",
    (PROVIDER, "accepting", SEND, "reject"): "closed",
}
TERMINAL = frozenset({"done", "closed"})

# Machine-readable reasons a provider gives in ``reject`` (and the buyer may log per candidate).
NO_CAPACITY = "no_capacity"
PRICE_TOO_LOW = "price_too_low"
IMAGE_NOT_ALLOWED = "image_not_allowed"
DURATION_TOO_LONG = "duration_too_long"
EXPIRED_OFFER = "expired_offer"
EXPIRED_PROPOSAL = "expired_proposal"
BUSY = "busy"
TERMS_UNACCEPTABLE = "terms_unacceptable"
BAD_PROPOSAL = "bad_proposal"
AGREEMENT_EXPIRED = "agreement_expired"
DUPLICATE_PROPOSAL = "duplicate_proposal"  # Rule 3
UNSTARTED_AGREEMENTS = "unstarted_agreements"  # market.deal Rule 5
# Rule 4: a registry image the provider will not pull.
REGISTRY_NOT_ALLOWED = "registry_not_allowed"  # the operator's list of registries does not name it
IMAGE_TOO_LARGE = "image_too_large"  # its manifest states more than the operator takes, or than the cache holds
IMAGE_UNAVAILABLE = "image_unavailable"  # the registry did not answer, has no such manifest, or no such platform
REJECT_REASONS = frozenset({NO_CAPACITY, PRICE_TOO_LOW, IMAGE_NOT_ALLOWED, DURATION_TOO_LONG, EXPIRED_OFFER,
                            EXPIRED_PROPOSAL, BUSY, TERMS_UNACCEPTABLE, BAD_PROPOSAL, AGREEMENT_EXPIRED,
                            DUPLICATE_PROPOSAL, UNSTARTED_AGREEMENTS, REGISTRY_NOT_ALLOWED, IMAGE_TOO_LARGE,
                            IMAGE_UNAVAILABLE})

# Rule 4: the two shapes of an image (sandbox.registry parses a registry reference in full).
_LOCAL_ID = re.compile(r"sha256:([0-9a-f]{64})")
_REGISTRY_REF = re.compile(r"[a-z0-9][a-z0-9._:/-]*@sha256:([0-9a-f]{64})")


def image_digest(image: str) -> bytes | None:
    """Rule 4: the 32 bytes that pin ``image`` (a local id, or a registry reference's manifest digest),
    or None when it is neither."""
    m = _LOCAL_ID.fullmatch(image) or _REGISTRY_REF.fullmatch(image)
    return bytes.fromhex(m.group(1)) if m else None


def is_registry_image(image: str) -> bool:
    return _REGISTRY_REF.fullmatch(image) is not None


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """Rule 4: an empty list allows any pinned image; otherwise its digest must be listed."""
    if not allowed:
        return True
    digest = image_digest(image)
    return digest is not None and f"sha256:{digest.hex()}" in allowed

# Rule 3: buyers set 30 s; ten minutes leaves room for slow buyers and skewed clocks.
MAX_PROPOSAL_LIFETIME_MS = 10 * 60_000


@dataclass
class Negotiation:
    role: str
    phase: str = "start"
    rounds: int = 0

    def _move(self, direction: str, message: str) -> str:
        nxt = next_phase(MOVES, self.role, self.phase, direction, message)
        if message == "propose":
            self.rounds += 1
            if self.rounds > MAX_ROUNDS:
                err = LocalProtocolError if direction == SEND else RemoteProtocolError
                raise err(f"more than {MAX_ROUNDS} proposals in one negotiation", rounds=self.rounds)
        self.phase = nxt
        return nxt

    def send(self, message: str) -> str:
        return self._move(SEND, message)

    def receive(self, message: str) -> str:
        return self._move(RECV, message)

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL


def check_proposal(proposal: Proposal, offer: Offer, provider: bytes, now_ms: int) -> str | None:
    """The provider's checks of a (signature-verified) proposal against its current offer, before
    capacity and price: the reject reason, or None."""
    if proposal.provider != provider:
        return BAD_PROPOSAL
    if proposal.expires_at_ms <= now_ms:
        return EXPIRED_PROPOSAL
    if proposal.expires_at_ms > now_ms + MAX_PROPOSAL_LIFETIME_MS:  # Rule 3: remembered for a bounded time
        return BAD_PROPOSAL
    if offer.expires_at_ms <= now_ms:
        return EXPIRED_OFFER
    if image_digest(proposal.job.image) is None:  # Rule 4
        return BAD_PROPOSAL
    if is_registry_image(proposal.job.image) and proposal.job.image_archive_sha256 is not None:
        return BAD_PROPOSAL  # pulled or shipped, not both
    if not image_allowed(proposal.job.image, offer.limits.allowed_images):
        return IMAGE_NOT_ALLOWED
    if proposal.max_duration_ms > offer.limits.max_duration_s * 1000 or proposal.max_duration_ms == 0:
        return DURATION_TOO_LONG
    if proposal.terms != offer.terms:  # an offer states the receipt terms its provider accepts
        return TERMS_UNACCEPTABLE
    return None


@dataclass
class ProposalMemory:
    """Rule 3: ids of proposals that got a bid, each kept until its proposal expires.

    Entries are created only by bids, which hold capacity, and last at most
    ``MAX_PROPOSAL_LIFETIME_MS``: the memory is bounded by the bids a provider can make in that time.
    """

    _until_ms: dict[bytes, int] = field(default_factory=dict)

    def seen(self, proposal_id: bytes, now_ms: int) -> bool:
        self._forget_expired(now_ms)
        return proposal_id in self._until_ms

    def remember(self, proposal_id: bytes, expires_at_ms: int, now_ms: int) -> None:
        self._forget_expired(now_ms)
        self._until_ms[proposal_id] = expires_at_ms

    def forget(self, proposal_id: bytes) -> None:
        """The bid was never countersigned: the same proposal may be tried again."""
        self._until_ms.pop(proposal_id, None)

    def __len__(self) -> int:
        return len(self._until_ms)

    def _forget_expired(self, now_ms: int) -> None:
        gone = [pid for pid, until in self._until_ms.items() if until <= now_ms]
        for pid in gone:
            del self._until_ms[pid]


def check_agreement(agreement: Agreement, proposal: Proposal, proposal_id: bytes, now_ms: int) -> list[str]:
    """The buyer's checks of a provider-signed agreement against what it proposed."""
    problems = []
    if agreement.proposal_id != proposal_id:
        problems.append("names another proposal")
    if agreement.provider != proposal.provider or agreement.buyer != proposal.buyer:
        problems.append("names other parties")
    if agreement.offer_id != proposal.offer_id:
        problems.append("names another offer")
    if agreement.job != proposal.job:
        problems.append("changes the job")
    elif not is_registry_image(proposal.job.image):  # Rule 4
        if agreement.image_manifest is not None or agreement.image_platform is not None:
            problems.append("names a registry manifest for a local image")
    elif agreement.image_manifest is None:
        problems.append("names no manifest for the registry image")
    elif agreement.image_platform is None and agreement.image_manifest != image_digest(proposal.job.image):
        problems.append("names another manifest than the image's digest")
    if agreement.resources != proposal.resources:
        problems.append("changes the resources")
    if agreement.terms != proposal.terms:
        problems.append("changes the receipt terms")
    if agreement.price_micros_per_s > proposal.max_price_micros_per_s:
        problems.append(f"price {agreement.price_micros_per_s} > max {proposal.max_price_micros_per_s}")
    if agreement.max_duration_ms > proposal.max_duration_ms:
        problems.append("extends the duration")
    if agreement.accept_by_ms <= now_ms:
        # Issue 13, L1: a bid made a moment ago cannot have expired unless our clock is off; say so.
        ahead = now_ms - agreement.created_at_ms
        problems.append("already expired" if ahead < CLOCK_NOTE_MS else
                        f"already expired by your clock, which is {ahead / 1000:.0f} s ahead of the provider's "
                        "(its bid's time); set your clock right (NTP)")
    return problems


CLOCK_NOTE_MS = 2000  # a bid older than this on arrival means a clock is off, not a slow network
