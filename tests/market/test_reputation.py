"""Local reputation: scores from outcomes, persisted in the node's database."""

from __future__ import annotations

from market.reputation import COMPLETED, FAILED, STOPPED_COUNTERSIGNING, score, scores
from settlement.store import Store


def test_score_weights_and_clamp():
    assert score({}) == 0
    assert score({COMPLETED: 3, FAILED: 1}) == 3
    assert score({STOPPED_COUNTERSIGNING: 1}) < score({}) < score({COMPLETED: 1})
    assert score({COMPLETED: 10_000}) == 1000


def test_outcomes_persist_and_count_once_per_agreement(tmp_path):
    a, b = b"a" * 32, b"b" * 32
    with Store(tmp_path / "n.db") as store:
        store.record_outcome(a, COMPLETED, b"1" * 32, 1)
        store.record_outcome(a, COMPLETED, b"1" * 32, 2)  # the same event again: counted once
        store.record_outcome(a, COMPLETED, b"2" * 32, 3)
        store.record_outcome(b, STOPPED_COUNTERSIGNING, b"3" * 32, 4)
    with Store(tmp_path / "n.db") as store:
        assert scores(store.outcome_counts()) == {a: 4, b: -5}
