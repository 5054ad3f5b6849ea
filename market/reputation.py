"""Local reputation (pure): a per-peer score from outcomes this node saw itself.

Nothing here is gossiped or trusted from others: each node ranks peers by its own experience.
Rule 1: the score is a weighted count, recent-agnostic and integer:
``completed * 2 - failed * 3 - rejected_after_agreement * 5 - stopped_countersigning * 5
- never_started * 5``, clamped to [-1000, 1000]. A peer never seen scores 0, so a newcomer ranks
above a peer that misbehaved.
Rule 2 (issue 13 M3): a provider notes ``never_started`` against a buyer whose agreement it closed
because no job started within its start window (capacity held for nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

COMPLETED = "completed"
FAILED = "failed"
REJECTED_AFTER_AGREEMENT = "rejected_after_agreement"
STOPPED_COUNTERSIGNING = "stopped_countersigning"
NEVER_STARTED = "never_started"
WEIGHTS: Mapping[str, int] = {COMPLETED: 2, FAILED: -3, REJECTED_AFTER_AGREEMENT: -5, STOPPED_COUNTERSIGNING: -5,
                              NEVER_STARTED: -5}
OUTCOMES = frozenset(WEIGHTS)
LIMIT = 1000


def score(counts: Mapping[str, int]) -> int:
    total = sum(WEIGHTS.get(outcome, 0) * n for outcome, n in counts.items())
    return max(-LIMIT, min(LIMIT, total))


def scores(rows: Iterable[tuple[bytes, str, int]]) -> dict[bytes, int]:
    """(peer, outcome, count) rows -> peer -> score."""
    per_peer: dict[bytes, dict[str, int]] = {}
    for peer, outcome, n in rows:
        per_peer.setdefault(peer, {})[outcome] = n
    return {peer: score(counts) for peer, counts in per_peer.items()}
