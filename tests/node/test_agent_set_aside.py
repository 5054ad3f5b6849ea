"""node.agent Rule 5 against a restart (issue 17 item 3): an offer is set aside only if it is the one a run
was given. A provider restarted on a new port publishes a newer offer; if it arrives while a run is failing
to reach the old instance, setting the provider aside would refuse the new offer until the one after it
(half an offer's life later). The agent keeps it instead, so the next run dials the new instance."""

from __future__ import annotations

from pathlib import Path

from market.offers import ProviderTerms, build_offer
from node.agent import Agent
from node.overlay import BuyerOverlay
from p2p.envelope import sign_record
from p2p.market_records import Limits, Prices, ReceiptTerms
from settlement.testing import key_from_label

TERMS = ProviderTerms(Prices({}, 50, 10), Limits(3600, 2, ()), ReceiptTerms(1000, 3000, 5000, 50_000))
KEY = key_from_label("restarted provider")
NOW = 1_000_000


def _offer(seq: int, port: int):  # noqa: ANN202
    return sign_record(build_offer(KEY.public, [f"/ip4/127.0.0.1/tcp/{port}"], TERMS, [], 2000, 4096, [], 2000,
                                   4096, seq, NOW), KEY)


def _agent() -> Agent:
    return Agent(node=None, key=None, home=Path("/nonexistent"), overlay=BuyerOverlay(), store=None)  # type: ignore[arg-type]


def test_the_offer_a_run_was_given_is_set_aside():
    agent, old = _agent(), _offer(1, 4001)
    assert agent.overlay.ledger.admit(old, NOW)
    agent.handed_out[KEY.public] = old.record_id
    agent.set_aside(KEY.peer_id)
    assert KEY.public not in agent.overlay.ledger.latest
    assert agent.overlay.ledger.judge(old.to_bytes(), KEY.public, NOW)[1] == "set aside"


def test_a_newer_offer_that_arrived_during_the_run_is_kept():
    agent, old, new = _agent(), _offer(1, 4001), _offer(2, 4002)
    assert agent.overlay.ledger.admit(old, NOW)
    agent.handed_out[KEY.public] = old.record_id  # the run dials the old instance ...
    assert agent.overlay.ledger.judge(new.to_bytes(), KEY.public, NOW)[1] == "ok"
    agent.overlay.ledger.admit(new, NOW)  # ... while the restarted one's offer arrives
    agent.set_aside(KEY.peer_id)
    assert agent.overlay.ledger.latest[KEY.public].record_id == new.record_id
