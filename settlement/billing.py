"""Billing arithmetic (pure): the agreement's integer price rule and the physical bounds on usage.

Rule 1: the amount due is computed from cumulative metered time, never by adding rounded pieces:
``amount_due(metered_ms, price) = metered_ms * price_micros_per_s // 1000`` (floor). A receipt's
amount must equal this exactly.

Rule 2 (physical bounds, with a stated tolerance): over any stretch of a job, a counter of
"unit-milliseconds" cannot grow faster than wall time times the units allocated. The tolerance
allows for clock granularity and sampling skew between the meter and the receipt's timestamp:
``bound(elapsed_ms, units_milli) = elapsed_ms * units_milli // 1000 + elapsed_ms * units_milli // 100_000
+ TOLERANCE_MS * max(1, units_milli // 1000)`` i.e. 1 % plus 250 ms per unit.
"""

from __future__ import annotations

TOLERANCE_MS = 250
TOLERANCE_PERCENT = 1


def amount_due(metered_ms: int, price_micros_per_s: int) -> int:
    """Micro-credits owed for ``metered_ms`` of allocation at ``price_micros_per_s`` (Rule 1)."""
    return metered_ms * price_micros_per_s // 1000


def usage_bound(elapsed_ms: int, units_milli: int) -> int:
    """The most unit-milliseconds ``units_milli``/1000 units can accrue in ``elapsed_ms`` (Rule 2)."""
    if elapsed_ms <= 0:
        return TOLERANCE_MS * max(1, units_milli // 1000)
    base = elapsed_ms * units_milli // 1000
    return base + base * TOLERANCE_PERCENT // 100 + TOLERANCE_MS * max(1, units_milli // 1000)


def metered_bound(elapsed_ms: int) -> int:
    """The most metered (allocation) milliseconds possible in ``elapsed_ms`` of wall time."""
    return usage_bound(elapsed_ms, 1000)
