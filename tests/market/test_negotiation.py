"""The negotiation state machine, every legal and illegal move (market.negotiation.MOVES)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from market.negotiation import (
    BAD_PROPOSAL,
    BUYER,
    DURATION_TOO_LONG,
    EXPIRED_OFFER,
    EXPIRED_PROPOSAL,
    IMAGE_NOT_ALLOWED,
    MAX_PROPOSAL_LIFETIME_MS,
    MAX_ROUNDS,
    MOVES,
    PROVIDER,
    RECV,
    SEND,
    TERMS_UNACCEPTABLE,
    Negotiation,
    ProposalMemory,
    check_agreement,
    check_proposal,
)
from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.market_records import Limits
from settlement.testing import key_from_label, make_agreement, make_offer

MESSAGES = ["propose", "agree", "counter", "reject", "accept", "confirm"]
PHASES = sorted({p for (_, p, _, _) in MOVES} | set(MOVES.values()))


def drive(role, path):
    n = Negotiation(role)
    for direction, message in path:
        (n.send if direction == SEND else n.receive)(message)
    return n


@pytest.mark.parametrize("role, path, final", [
    (BUYER, [(SEND, "propose"), (RECV, "agree"), (SEND, "accept"), (RECV, "confirm")], "done"),
    (BUYER, [(SEND, "propose"), (RECV, "counter"), (SEND, "propose"), (RECV, "agree"), (SEND, "accept"),
             (RECV, "confirm")], "done"),
    (BUYER, [(SEND, "propose"), (RECV, "reject")], "closed"),
    (BUYER, [(SEND, "propose"), (RECV, "agree"), (SEND, "accept"), (RECV, "reject")], "closed"),
    (PROVIDER, [(RECV, "propose"), (SEND, "agree"), (RECV, "accept"), (SEND, "confirm")], "done"),
    (PROVIDER, [(RECV, "propose"), (SEND, "counter"), (RECV, "propose"), (SEND, "reject")], "closed"),
    (PROVIDER, [(RECV, "propose"), (SEND, "agree"), (RECV, "accept"), (SEND, "reject")], "closed"),
])
def test_legal_paths(role, path, final):
    n = drive(role, path)
    assert n.phase == final and n.finished


@pytest.mark.parametrize("role, phase, direction, message",
                         [(r, p, d, m) for r, p, d, m in itertools.product((BUYER, PROVIDER), PHASES, (SEND, RECV),
                                                                            MESSAGES)])
def test_every_move_is_legal_exactly_when_the_table_says(role, phase, direction, message):
    n = Negotiation(role, phase=phase)
    legal = (role, phase, direction, message) in MOVES
    if legal:
        (n.send if direction == SEND else n.receive)(message)
        assert n.phase == MOVES[(role, phase, direction, message)]
    else:
        error = LocalProtocolError if direction == SEND else RemoteProtocolError
        with pytest.raises(error):
            (n.send if direction == SEND else n.receive)(message)
        assert n.phase == phase


def test_rounds_are_bounded():
    n = Negotiation(PROVIDER)
    for _ in range(MAX_ROUNDS - 1):
        n.receive("propose")
        n.send("counter")
    n.receive("propose")
    n.send("counter")
    with pytest.raises(RemoteProtocolError, match="proposals"):
        n.receive("propose")


P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, AGREEMENT = make_agreement(P, B)
NOW = PROPOSAL.record.created_at_ms + 1


@pytest.mark.parametrize("change, offer_change, now, reason", [
    ({}, {}, NOW, None),
    ({"provider": B.public}, {}, NOW, BAD_PROPOSAL),
    ({"expires_at_ms": NOW}, {}, NOW, EXPIRED_PROPOSAL),
    ({}, {"expires_at_ms": NOW}, NOW, EXPIRED_OFFER),
    ({"job": "tag"}, {}, NOW, BAD_PROPOSAL),
    ({}, {"limits": Limits(3600, 4, ("sha256:" + "cd" * 32,))}, NOW, IMAGE_NOT_ALLOWED),
    ({"max_duration_ms": 3600 * 1000 + 1}, {}, NOW, DURATION_TOO_LONG),
    ({"max_duration_ms": 0}, {}, NOW, DURATION_TOO_LONG),
    ({"terms": "cap"}, {}, NOW, TERMS_UNACCEPTABLE),
    ({"expires_at_ms": NOW + MAX_PROPOSAL_LIFETIME_MS}, {}, NOW, None),
    ({"expires_at_ms": NOW + MAX_PROPOSAL_LIFETIME_MS + 1}, {}, NOW, BAD_PROPOSAL),  # L7: remembered too long
])
def test_provider_checks_of_a_proposal(change, offer_change, now, reason):
    proposal = PROPOSAL.record
    if change.get("job") == "tag":
        change = {"job": replace(proposal.job, image="busybox:latest")}
    if change.get("terms") == "cap":
        change = {"terms": replace(proposal.terms, exposure_cap_micros=1)}
    offer = replace(make_offer(P), **offer_change)
    assert check_proposal(replace(proposal, **change), offer, P.public, now) == reason


@pytest.mark.parametrize("change, problem", [
    ({}, None),
    ({"proposal_id": b"\1" * 32}, "names another proposal"),
    ({"buyer": P.public}, "names other parties"),
    ({"offer_id": b"\2" * 32}, "names another offer"),
    ({"price_micros_per_s": 111}, "price 111 > max 110"),
    ({"max_duration_ms": 600_001}, "extends the duration"),
    ({"accept_by_ms": NOW}, "already expired"),
    ({"job": "cmd"}, "changes the job"),
])
def test_buyer_checks_of_an_agreement(change, problem):
    ag = AGREEMENT.record
    if change.get("job") == "cmd":
        change = {"job": replace(ag.job, command=("rm", "-rf", "/"))}
    problems = check_agreement(replace(ag, **change), PROPOSAL.record, PROPOSAL.record_id, NOW)
    assert problems == ([] if problem is None else [problem])


# --- issue 13 L7: one proposal, at most one agreement ------------------------------------------
def test_a_proposal_is_remembered_until_it_expires():
    memory = ProposalMemory()
    memory.remember(b"p1", expires_at_ms=1_000, now_ms=0)
    memory.remember(b"p2", expires_at_ms=5_000, now_ms=0)
    assert memory.seen(b"p1", 999) and memory.seen(b"p2", 999) and not memory.seen(b"p3", 999)
    assert not memory.seen(b"p1", 1_000) and len(memory) == 1  # expired proposals are forgotten
    memory.forget(b"p2")  # a bid never countersigned
    assert not memory.seen(b"p2", 1_001) and len(memory) == 0
