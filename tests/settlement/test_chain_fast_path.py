"""The audit's fast path (settlement.rules ``_clean``, billing's arithmetic inlined) says a receipt is clean
exactly when the rule-by-rule ``_findings`` finds nothing (split from test_chain.py)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.receipt_records import BUYER_UNRESPONSIVE, COMPLETED, FINAL, RUNNING, Receipt, Usage
from settlement.billing import (
    amount_due,
    energy_bound_mj,
    gpu_memory_bound_bytes,
    memory_bound_bytes,
    metered_bound,
    sm_pct_bound,
    usage_bound,
)
from settlement.chain import ChainChecker
from settlement.testing import key_from_label, make_agreement

AGREEMENT = make_agreement(key_from_label("provider"), key_from_label("buyer"))[2]


@st.composite
def _agreements(draw):
    ag = AGREEMENT.record
    resources = replace(ag.resources, gpus=draw(st.sampled_from([0, 1, 2])),
                        cpu_millis=draw(st.sampled_from([1, 500, 1000, 2500])))
    return replace(ag, resources=resources, price_micros_per_s=draw(st.sampled_from([0, 1, 110, 999_999])),
                   max_duration_ms=draw(st.sampled_from([0, 5000, 600_000])),
                   terms=replace(ag.terms, interval_ms=draw(st.sampled_from([0, 1000]))))


_COUNTERS = ("cpu_core_ms", "mem_peak_bytes", "gpu_ms", "gpu_mem_peak_bytes", "gpu_sm_pct_ms", "energy_mj")
# Each receipt below is tried honest, then with one thing a unit off or wrong: the rules are bounds,
# and an inlined formula that is wrong shows just at them.
_VARIANTS = [(None, 0), *((name, d) for name in ("metered", "issued", "amount", "seq", *_COUNTERS) for d in (-1, 1)),
             *((name, 0) for name in ("agreement_id", "provider", "buyer", "prev", "state", "reason", "exit_code",
                                      "output_digest"))]


@st.composite
def _shapes(draw):
    """How an honest next receipt moves on: metered step, slack in its issue time, state, growth."""
    return (draw(st.sampled_from([0, 1, 249, 250, 999, 250_000, None])), draw(st.sampled_from([0, 7])),
            draw(st.sampled_from([None, None, COMPLETED, BUYER_UNRESPONSIVE])), draw(st.sampled_from([0, 5])))


def _receipt_after(ag, checker, shape, broken, delta):
    """The next receipt of ``shape``, figures at their bounds, with ``broken`` off by ``delta`` (or wrong)."""
    (step, slack, reason, growth), prev, units = shape, checker.last, ag.resources
    off = {broken: delta}.get
    metered = ((prev.metered_ms if prev else 0) + step if step is not None
               else ag.max_duration_ms + ag.terms.interval_ms) + off("metered", 0)
    # The earliest issue time whose wall-clock bound allows ``metered`` (metered -1: no such receipt is
    # ever decoded, but the two must agree on it too).
    elapsed = next(e for e in range(max(-5, (metered - 250) * 100 // 101 - 3), metered + 2)
                   if metered_bound(e) >= metered)
    issued = max(prev.issued_at_ms if prev else 0, ag.created_at_ms + elapsed + slack) + off("issued", 0)
    final, completed = reason is not None, reason == COMPLETED
    pu = prev.usage if prev else Usage(0, 0, 0, 0, 0, 0)
    usage = {name: getattr(pu, name) + growth for name in _COUNTERS}
    usage.update(cpu_core_ms=usage_bound(metered, units.cpu_millis),
                 gpu_ms=usage_bound(metered, units.gpus * 1000) if units.gpus else 0)
    if growth:  # the other counters at their bounds (settlement.billing Rule 2b)
        usage.update(mem_peak_bytes=memory_bound_bytes(units.memory_mib),
                     gpu_mem_peak_bytes=gpu_memory_bound_bytes(units.gpus),
                     gpu_sm_pct_ms=sm_pct_bound(metered, units.gpus),
                     energy_mj=energy_bound_mj(issued - ag.created_at_ms, units.gpus))
    else:
        for name in ("gpu_sm_pct_ms", "gpu_mem_peak_bytes", "energy_mj"):
            usage[name] *= bool(units.gpus)
    honest = {"agreement_id": checker.agreement_id, "provider": ag.provider, "buyer": ag.buyer,
              "prev": checker.last_id, "state": FINAL if final else RUNNING, "reason": reason,
              "exit_code": 0 if completed else None, "output_digest": b"\3" * 32 if completed else None}
    wrong = {"agreement_id": b"\2" * 32, "provider": ag.buyer, "buyer": ag.provider, "prev": b"\1" * 32,
             "state": "paused", "reason": "because" if final else COMPLETED, "exit_code": None if completed else 0,
             "output_digest": None if completed else b"\3" * 32}
    return Receipt(**{name: wrong[name] if name == broken else value for name, value in honest.items()},
                   seq=(prev.seq + 1 if prev else 1) + off("seq", 0), issued_at_ms=issued, metered_ms=metered,
                   usage=Usage(**{name: max(0, value + off(name, 0)) for name, value in usage.items()}),
                   amount_micros=amount_due(metered, ag.price_micros_per_s) + off("amount", 0))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_fast_path_is_clean_exactly_when_no_rule_fires(data):
    """``_clean`` restates every rule with settlement.billing's arithmetic inlined: it must say True
    exactly when the rule-by-rule ``_findings`` (which calls billing) finds nothing."""
    ag = data.draw(_agreements())
    checker = ChainChecker(ag, b"\4" * 32)
    for _ in range(data.draw(st.integers(1, 4))):
        shape = data.draw(_shapes())
        for broken, delta in _VARIANTS:
            r = _receipt_after(ag, checker, shape, broken, delta)
            rid = hashlib.sha256(r.encode()).digest()
            for monotonic in (True, False):
                assert checker._clean(r, monotonic) == (not checker._findings(r, rid, monotonic)), (broken, delta)
                assert checker.check_content(r, rid, monotonic=monotonic) == checker._findings(r, rid, monotonic)
        broken, delta = data.draw(st.sampled_from(_VARIANTS))  # what the next one follows: now and then a bad one
        r = _receipt_after(ag, checker, shape, broken, delta)
        checker.advance(r, hashlib.sha256(r.encode()).digest())
