"""A protocol's state table, looked up (pure): the one step both of Suanli's session machines take
(market.negotiation for ``/suanli/negotiate/1.0.0``, node.jobsession for ``/suanli/job/1.0.0``).

A table maps (role, phase, direction, message) to the next phase, as h11's ``_state.py`` does.
Rule 1: a move not in the table is our bug when we try it (LocalProtocolError) and the peer's fault
when the peer does (RemoteProtocolError); either error names the phase and the message, and the
caller's phase is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

from p2p.errors import LocalProtocolError, RemoteProtocolError

SEND, RECV = "send", "recv"

Moves = Mapping[tuple[str, str, str, str], str]


def next_phase(moves: Moves, role: str, phase: str, direction: str, message: str) -> str:
    """The phase after ``role`` in ``phase`` sends (``SEND``) or receives (``RECV``) ``message``."""
    nxt = moves.get((role, phase, direction, message))
    if nxt is None:
        if direction == SEND:
            raise LocalProtocolError(f"the {role} may not send {message!r} in phase {phase!r}",
                                     phase=phase, msg_type=message)
        raise RemoteProtocolError(f"the peer sent {message!r} to the {role} in phase {phase!r}",
                                  phase=phase, msg_type=message)
    return nxt
