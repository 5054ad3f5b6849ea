"""The trio shell of negotiation: ``/suanli/negotiate/1.0.0`` for providers and buyers.

The provider's ``ProviderMarket.handle`` answers one stream: it reads the buyer's signed Proposal,
asks the pure ``market.deal.decide`` what to do, signs a firm bid when there is capacity, and on the
buyer's countersignature stores the agreement (durably, before confirming) and confirms. The buyer's
``negotiate`` runs the other side and returns the countersigned agreement, or raises
``NegotiationRefused`` with the provider's reason.

Rule 1: every message from the peer is checked before it is believed: the proposal's buyer must be the
stream's authenticated peer; the countersigned agreement must be byte-for-byte the bid, with a valid
buyer signature.
Rule 2: a bid's capacity is released the moment its stream ends without a countersignature (and by
the ledger's hold timeout as a backstop).
Rule 3: time budgets are the caller's (the buyer wraps ``negotiate`` in ``trio.fail_after``; the
provider's handler runs under ``serve_framed``'s per-stream budget).
Rule 4 (issue 13 L7): a proposal that already has a bid or an agreement is refused
(``duplicate_proposal``), on this stream or any other, until it expires (market.negotiation Rule 3).
Rule 5 (issue 13 M3): the buyer's unstarted agreements, counted by the daemon (``unstarted``), bound
its new bids (market.deal Rule 5).
Rule 6 (issue 17 item 3): the buyer dials a provider at the addresses of the offer it answers, never
only at what the peerstore remembers: a provider restarted on a new port publishes a new offer with its
new addresses, while py-libp2p keeps the old ones first and dials one TCP address per peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from market.capacity import Allocation, CapacityLedger
from market.deal import Bid, CounterPrice, ImageVerdict, Refuse, decide
from market.negotiation import (
    AGREEMENT_EXPIRED,
    BUYER,
    DUPLICATE_PROPOSAL,
    PROVIDER,
    REGISTRY_NOT_ALLOWED,
    Negotiation,
    ProposalMemory,
    check_agreement,
    is_registry_image,
)
from market.offers import OfferedGpu
from p2p.envelope import Signed, countersign, open_signed, sign_record
from p2p.errors import RemoteProtocolError, SuanliError
from p2p.framing import FramedStream
from p2p.host import Node, PeerUnreachableError
from p2p.identity import NodeKey, public_from_peer_id
from p2p.market_records import Agreement, JobSpec, Offer, Proposal
from p2p.negotiate_wire import NAMES, PROTOCOL_ID, Accept, Agree, Confirm, Counter, Propose, Reject, decode_message
from p2p.records import Record
from p2p.relay import is_circuit
from p2p.relay_dial import DIRECT_FIRST_S, DIRECT_UPGRADE_S, relay_refusal

log = logging.getLogger("suanli.market")

# A provider reachable only through a relay: its direct dial, the circuit, and the hole punch (p2p.relay_dial).
RELAYED_CONNECT_S = DIRECT_FIRST_S + DIRECT_UPGRADE_S

OnAgreement = Callable[[Signed[Agreement], Signed[Proposal], Allocation], Awaitable[None]]
Unstarted = Callable[[bytes], int]  # buyer public key -> its confirmed agreements whose job has not started


def no_unstarted(buyer: bytes) -> int:
    return 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class NegotiationRefused(SuanliError):
    """The provider said no (``reason`` is machine-readable), or countered with ``price_micros_per_s``."""


async def _receive(framed: FramedStream, n: Negotiation) -> Record:
    payload = await framed.receive_frame()
    if payload is None:
        raise RemoteProtocolError(f"{framed.peer} closed the negotiation in phase {n.phase}", peer=framed.peer)
    msg = decode_message(payload)
    n.receive(NAMES[type(msg)])  # type: ignore[index]
    return msg


async def _send(framed: FramedStream, n: Negotiation, msg: Record) -> None:
    n.send(NAMES[type(msg)])  # type: ignore[index]
    await framed.send_frame(msg.encode())


@dataclass
class ProviderMarket:
    key: NodeKey
    ledger: CapacityLedger
    gpus: Sequence[OfferedGpu]
    on_agreement: OnAgreement
    hold_ms: int = 10_000
    clock: Callable[[], int] = now_ms
    offers: dict[bytes, Offer] = field(default_factory=dict)  # live offers by id (the current one and recent)
    unstarted: Unstarted = no_unstarted  # Rule 5
    proposals: ProposalMemory = field(default_factory=ProposalMemory)  # Rule 4
    accepting: bool | str = True  # market.deal Rule 6: False (or why, a text) refuses every new bid, on any offer
    # market.negotiation Rule 4: the provider's own check of a registry image (its policy, the registry's
    # manifest), awaited before ``decide``; None: registry images are refused.
    check_image: Callable[[JobSpec], Awaitable[ImageVerdict]] | None = None

    def publish(self, signed: Signed[Offer]) -> None:
        """Make an offer negotiable; forget offers that have expired."""
        now = self.clock()
        self.offers = {oid: o for oid, o in self.offers.items() if o.expires_at_ms > now}
        self.offers[signed.record_id] = signed.record

    async def _image_verdict(self, job: JobSpec) -> ImageVerdict:
        """market.negotiation Rule 4: nothing to check for a local id; a registry image asks the provider's
        own check (bounded in time there), or is refused when this provider pulls nothing."""
        if not is_registry_image(job.image):
            return ImageVerdict()
        if self.check_image is None:
            return ImageVerdict(refuse=Refuse(REGISTRY_NOT_ALLOWED,
                                              "this provider does not pull images from registries"))
        return await self.check_image(job)

    async def handle(self, framed: FramedStream) -> None:
        n = Negotiation(PROVIDER)
        buyer_public = public_from_peer_id(framed.peer)
        bid: tuple[Signed[Agreement], Signed[Proposal], Allocation] | None = None
        confirmed = False
        try:
            while not n.finished:
                msg = await _receive(framed, n)
                if isinstance(msg, Propose):
                    proposal = open_signed(msg.proposal, Proposal)
                    if proposal.record.buyer != buyer_public:
                        raise RemoteProtocolError("the proposal names another buyer than the stream's peer",
                                                  peer=framed.peer)
                    if bid is not None:  # a new proposal replaces an earlier bid on this stream
                        self.ledger.release(bid[0].record_id)
                        self.proposals.forget(bid[1].record_id)
                        bid = None
                    now = self.clock()
                    if self.proposals.seen(proposal.record_id, now):  # Rule 4
                        await _send(framed, n, Reject(DUPLICATE_PROPOSAL, "this proposal already has a bid or "
                                                      "an agreement; sign a new one (a new nonce) for another job"))
                        continue
                    verdict = await self._image_verdict(proposal.record.job)
                    if verdict.refuse is not None:
                        await _send(framed, n, Reject(verdict.refuse.reason, verdict.refuse.detail))
                        continue
                    now = self.clock()
                    decision = decide(proposal.record, proposal.record_id, self.key.public, self.offers, self.gpus,
                                      self.ledger, now, self.hold_ms, self.unstarted(proposal.record.buyer),
                                      accepting=self.accepting, image_manifest=verdict.manifest,
                                      image_platform=verdict.platform)
                    if isinstance(decision, Refuse):
                        await _send(framed, n, Reject(decision.reason, decision.detail))
                    elif isinstance(decision, CounterPrice):
                        await _send(framed, n, Counter(decision.price_micros_per_s, decision.detail))
                    elif isinstance(decision, Bid):
                        signed = sign_record(decision.agreement, self.key)
                        bid = (signed, proposal, decision.allocation)
                        self.proposals.remember(proposal.record_id, proposal.record.expires_at_ms, now)
                        await _send(framed, n, Agree(signed.to_bytes()))
                elif isinstance(msg, Accept) and bid is not None:  # the table allows accept only after agree
                    ours, proposal, allocation = bid
                    accepted = open_signed(msg.agreement, Agreement, min_sigs=2)
                    if accepted.body != ours.body or accepted.sigs[0] != ours.sigs[0]:
                        raise RemoteProtocolError("the countersigned agreement is not our bid", peer=framed.peer)
                    if self.ledger.confirm(accepted.record_id, self.clock()) is None:
                        await _send(framed, n, Reject(AGREEMENT_EXPIRED, "the bid expired before the countersignature"))
                        continue
                    try:
                        await self.on_agreement(accepted, proposal, allocation)  # durable before we confirm
                    except BaseException:
                        self.ledger.release(accepted.record_id)
                        raise
                    confirmed = True
                    await _send(framed, n, Confirm(accepted.record_id))
        finally:
            if bid is not None and not confirmed:
                self.ledger.release(bid[0].record_id)
                self.proposals.forget(bid[1].record_id)  # never agreed: the buyer may try it again


@dataclass(frozen=True)
class Deal:
    agreement: Signed[Agreement]
    proposal: Signed[Proposal]


BeforeAccept = Callable[[Signed[Agreement], Signed[Proposal]], Awaitable[None]]


async def negotiate(framed: FramedStream, key: NodeKey, proposal: Signed[Proposal],
                    clock: Callable[[], int] = now_ms, before_accept: BeforeAccept | None = None) -> Deal:
    """The buyer's side of one negotiation on an open stream; NegotiationRefused when refused.

    ``before_accept`` runs with the countersigned agreement before it is sent: the buyer keeps its
    own evidence of what it signed even if the provider never confirms.
    """
    n = Negotiation(BUYER)
    await _send(framed, n, Propose(proposal.to_bytes()))
    msg = await _receive(framed, n)
    if isinstance(msg, Reject):
        raise NegotiationRefused(f"{framed.peer} refused: {msg.reason}: {msg.detail}", reason=msg.reason,
                                 peer=framed.peer)
    if isinstance(msg, Counter):
        raise NegotiationRefused(f"{framed.peer} asks {msg.price_micros_per_s} micro-credits/s "
                                 f"(your max is {proposal.record.max_price_micros_per_s})", reason="counter",
                                 price_micros_per_s=msg.price_micros_per_s, peer=framed.peer)
    if not isinstance(msg, Agree):
        raise RemoteProtocolError(f"unexpected {type(msg).__name__}", peer=framed.peer)
    bid = open_signed(msg.agreement, Agreement)
    if bid.record.provider != public_from_peer_id(framed.peer):
        raise RemoteProtocolError("the agreement is signed by another provider than the stream's peer",
                                  peer=framed.peer)
    problems = check_agreement(bid.record, proposal.record, proposal.record_id, clock())
    if problems:
        raise RemoteProtocolError(f"{framed.peer} sent an agreement that {'; '.join(problems)}", peer=framed.peer)
    accepted = countersign(bid, key)
    if before_accept is not None:
        await before_accept(accepted, proposal)
    await _send(framed, n, Accept(accepted.to_bytes()))
    msg = await _receive(framed, n)
    if isinstance(msg, Reject):
        raise NegotiationRefused(f"{framed.peer} refused: {msg.reason}: {msg.detail}", reason=msg.reason,
                                 peer=framed.peer)
    if not isinstance(msg, Confirm) or msg.agreement_id != accepted.record_id:
        raise RemoteProtocolError("the provider confirmed another agreement", peer=framed.peer)
    return Deal(accepted, proposal)


@dataclass(frozen=True)
class Attempt:
    provider: str
    outcome: str
    answered: bool = True  # False: unreachable, silent, or its answer broke off or was malformed


async def negotiate_with(node: Node, provider: str, key: NodeKey, proposal: Signed[Proposal],
                         before_accept: BeforeAccept | None = None, addrs: Sequence[str] = (),
                         bulk_bytes: int = 0) -> Deal:
    """Open ``/suanli/negotiate/1.0.0`` to ``provider`` (Rule 6: at ``addrs``, its offer's) and negotiate on it.

    Rule 7 (issue 15): when the connection stayed relayed (hole punching failed) and ``bulk_bytes`` (the
    image archive and inputs to send) do not fit the relay's limit, the job is refused before any bid."""
    framed = FramedStream(await node.open_stream(provider, PROTOCOL_ID, addrs))
    refusal = relay_refusal(node, provider, bulk_bytes)
    if refusal is not None:
        await framed.aclose()
        raise NegotiationRefused(f"{provider}: {refusal}", reason="needs_direct_connection", peer=provider)
    try:
        return await negotiate(framed, key, proposal, before_accept=before_accept)
    finally:
        await framed.aclose()


async def negotiate_first(node: Node, key: NodeKey, candidates: Sequence[tuple[str, Signed[Proposal]]],
                          per_candidate_s: float, before_accept: BeforeAccept | None = None,
                          addrs: Mapping[str, Sequence[str]] | None = None, bulk_bytes: int = 0,
                          ) -> tuple[Deal | None, list[Attempt]]:
    """Try candidates in order; a refusal, an error or silence costs at most ``per_candidate_s``, plus, for a
    provider whose offer names a relayed address, the time to connect through the relay and try hole
    punching (``RELAYED_CONNECT_S``), so that it can answer, or be refused with the relay's reason, instead
    of running out of time while the connection is still being made.

    ``addrs``: each candidate's addresses as its offer states them (Rule 6).
    """
    attempts: list[Attempt] = []
    for provider, proposal in candidates:
        its = (addrs or {}).get(provider, ())
        budget_s = per_candidate_s + (RELAYED_CONNECT_S if any(is_circuit(a) for a in its) else 0.0)
        try:
            with trio.fail_after(budget_s):
                deal = await negotiate_with(node, provider, key, proposal, before_accept, its, bulk_bytes)
        except trio.TooSlowError:
            attempts.append(Attempt(provider, f"no answer within {budget_s:g} s", answered=False))
        except NegotiationRefused as exc:
            attempts.append(Attempt(provider, str(exc)))
        except (RemoteProtocolError, PeerUnreachableError) as exc:
            attempts.append(Attempt(provider, f"failed: {exc}", answered=False))
        else:
            attempts.append(Attempt(provider, "agreed"))
            return deal, attempts
    return None, attempts
