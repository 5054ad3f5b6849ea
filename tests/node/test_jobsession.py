"""The job protocol's table (node.jobsession): every legal move goes where the table says, every other
move is our bug when we try it and the peer's fault when it arrives, and the honest walks of both
roles are in it."""

from __future__ import annotations

import itertools

import pytest

from node.jobsession import BUYER, KINDS, MOVES, PROVIDER, RECV, SEND, TERMINAL, JobMachine, kind_of
from p2p.errors import LocalProtocolError, RemoteProtocolError
from p2p.job_wire import Cancel, Chunk, Countersign, Done, End, Fail, Log, ReceiptMsg, Start, Status
from p2p.receipt_records import FINAL, RUNNING
from settlement.testing import key_from_label, make_agreement, next_receipt

ROLES = (PROVIDER, BUYER)
PHASES = {role: sorted({"start"} | {p for (r, p, _, _) in MOVES if r == role} | {n for (r, _, _, _), n in MOVES.items()
                                                                                  if r == role}) for role in ROLES}


@pytest.mark.parametrize("role", ROLES)
def test_every_move_of_the_table_and_every_move_outside_it(role):
    legal = illegal = 0
    for phase, direction, kind in itertools.product(PHASES[role], (SEND, RECV), KINDS):
        machine = JobMachine(role, phase)
        nxt = MOVES.get((role, phase, direction, kind))
        assert machine.allows(direction, kind) == (nxt is not None)
        if nxt is not None:
            assert machine.move(direction, kind) == nxt and machine.phase == nxt
            legal += 1
            continue
        error = LocalProtocolError if direction == SEND else RemoteProtocolError
        with pytest.raises(error) as raised:
            machine.move(direction, kind)
        assert machine.phase == phase, "an illegal move changes nothing"
        assert raised.value.fields == {"phase": phase, "msg_type": kind}
        illegal += 1
    assert legal == sum(1 for key in MOVES if key[0] == role) and illegal > legal


def test_terminal_phases_allow_nothing_but_the_providers_late_countersignatures():
    for role, phase in itertools.product(ROLES, TERMINAL):
        allowed = {(d, k) for (r, p, d, k) in MOVES if r == role and p == phase}
        assert allowed == ({(RECV, "countersign"), (RECV, "cancel")} if (role, phase) == (PROVIDER, "done")
                           else set()), (role, phase)


def _walk(role, steps):
    machine = JobMachine(role)
    for direction, kind in steps:
        machine.move(direction, kind)
    return machine.phase


def test_the_honest_walks():
    provider_run = [(RECV, "start"), (SEND, "status"), (RECV, "image"), (SEND, "status"), (RECV, "inputs"),
                    (SEND, "status"), (SEND, "running"), (SEND, "log"), (SEND, "receipt"), (RECV, "countersign"),
                    (SEND, "status"), (RECV, "cancel"), (SEND, "final"), (RECV, "countersign"), (SEND, "outputs"),
                    (SEND, "done"), (RECV, "countersign")]
    assert _walk(PROVIDER, provider_run) == "done"
    assert _walk(PROVIDER, [(RECV, "start"), (SEND, "status"), (SEND, "fail"), (SEND, "final")]) == "closed"
    assert _walk(PROVIDER, [(RECV, "start"), (SEND, "status"), (SEND, "final"), (SEND, "done")]) == "done"
    buyer_run = [(SEND, "start"), (RECV, "status"), (SEND, "image"), (RECV, "status"), (SEND, "inputs"),
                 (RECV, "running"), (RECV, "log"), (RECV, "receipt"), (SEND, "countersign"), (SEND, "cancel"),
                 (RECV, "status"), (RECV, "final"), (RECV, "log"), (SEND, "countersign"), (RECV, "outputs"),
                 (RECV, "done")]
    assert _walk(BUYER, buyer_run) == "done"
    assert _walk(BUYER, [(SEND, "start"), (SEND, "cancel"), (RECV, "fail")]) == "closed"


def test_what_the_table_refuses():
    cases = [
        (PROVIDER, [(RECV, "start")], RECV, "cancel"),  # a cancel during the upload fails the upload
        (PROVIDER, [(RECV, "start"), (SEND, "running")], SEND, "fail"),  # a started job ends with a final
        (PROVIDER, [(RECV, "start"), (SEND, "running"), (SEND, "final")], SEND, "receipt"),  # nothing after final
        (PROVIDER, [(RECV, "start"), (SEND, "running")], SEND, "outputs"),  # outputs only after the final
        (PROVIDER, [(RECV, "start"), (SEND, "running")], RECV, "start"),
        (BUYER, [(SEND, "start"), (RECV, "running")], RECV, "done"),  # done without a final receipt
        (BUYER, [(SEND, "start"), (RECV, "running")], RECV, "outputs"),  # outputs before the final
        (BUYER, [(SEND, "start")], RECV, "receipt"),  # billing before the container runs
        (BUYER, [(SEND, "start"), (RECV, "running")], SEND, "inputs"),
        (BUYER, [(SEND, "start"), (RECV, "fail")], SEND, "cancel"),
    ]
    for role, steps, direction, kind in cases:
        machine = JobMachine(role)
        for d, k in steps:
            machine.move(d, k)
        assert not machine.allows(direction, kind), (role, steps, direction, kind)


P, B = key_from_label("table-provider"), key_from_label("table-buyer")
_, _, AGREEMENT = make_agreement(P, B)


def test_kind_of_every_message():
    from p2p.envelope import sign_record

    running = sign_record(next_receipt(AGREEMENT, None, AGREEMENT.record_id), P)
    final = sign_record(next_receipt(AGREEMENT, None, AGREEMENT.record_id, final=True), P)
    assert running.record.state == RUNNING and final.record.state == FINAL
    assert kind_of(Start(b"\0" * 32, 0, 0)) == "start"
    assert [kind_of(Chunk(k, b"")) for k in ("image", "inputs", "outputs")] == ["image", "inputs", "outputs"]
    assert kind_of(End("outputs", 0, b"\0" * 32)) == "outputs"
    assert kind_of(Chunk("logs", b"")) not in KINDS  # a transfer of no known kind is never legal
    assert kind_of(Status("running", 0, "")) == "running" and kind_of(Status("paused", 0, "")) == "status"
    assert kind_of(Log("stdout", b"")) == "log"
    assert kind_of(ReceiptMsg(running.to_bytes()), running.record) == "receipt"
    assert kind_of(ReceiptMsg(final.to_bytes()), final.record) == "final"
    assert kind_of(Countersign(b"")) == "countersign" and kind_of(Cancel("x")) == "cancel"
    assert kind_of(Done(0, False, False, "completed", 0)) == "done" and kind_of(Fail("x", "")) == "fail"
