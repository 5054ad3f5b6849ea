"""Billing arithmetic (pure): the agreement's integer price rule and the physical bounds on usage.

Rule 1: the amount due is computed from cumulative metered time, never by adding rounded pieces:
``amount_due(metered_ms, price) = metered_ms * price_micros_per_s // 1000`` (floor). A receipt's
amount must equal this exactly.

Rule 2 (physical bounds, with a stated tolerance): over any stretch of a job, a counter of
"unit-milliseconds" cannot grow faster than wall time times the units allocated. The tolerance
allows for clock granularity and sampling skew between the meter and the receipt's timestamp:
``bound(elapsed_ms, units_milli) = elapsed_ms * units_milli // 1000 + elapsed_ms * units_milli // 100_000
+ TOLERANCE_MS * max(1, units_milli // 1000)`` i.e. 1 % plus 250 ms per unit.

Rule 3 (unsigned claims, one rule whatever the final reason): after the last receipt the buyer
countersigned (metered ``m``, amount ``a``; 0 and 0 when there is none), receipts the buyer never
countersigned are owed up to ``unsigned_ceiling = min(amount_due(m + unsigned_window_ms), a + cap)``
(cumulative), where ``unsigned_window_ms = 2 * interval + countersign_timeout + grace``: the longest the
exposure guard lets a job hold its allocation past the last countersignature (the receipt in flight,
the timeout, one tick of the guard, and the grace during which the job is paused, then stopped). So a
buyer that never countersigns owes at most that window (and never more than the exposure cap), and a
provider that invents a claim, whatever its size, is owed no more.
Rule 2b (bounds on the other usage counters, from the agreed resources; docs/PROTOCOL.md §4): memory
peaks are bounded by the memory limit, ``memory_bound_bytes(memory_mib)`` (1 % plus 16 MiB over it: the
kernel may charge a cgroup a per-CPU batch of pages past ``memory.max`` before it reclaims); with no GPUs
agreed every GPU counter and the energy are 0; with ``g`` GPUs, GPU memory is at most
``g * MAX_GPU_MEMORY_BYTES``, SM-percent-milliseconds at most ``100 * bound(metered, 1000 g)`` (each GPU
busy at most 100 % of the metered time) and the boards' energy at most
``MAX_GPU_WATTS * bound(elapsed, 1000 g)`` millijoules (W = mJ/ms; board counters run over wall time).
Rule 2c: ``bound`` of a negative elapsed time is ``bound(0, u)``: the tolerance alone (such a receipt is
``outside_timeline`` anyway).
Rule 4 (timeline): a receipt is issued no earlier than its agreement and no later than
``timeline_end_ms``: the agreement's time plus ``START_ALLOWANCE_MS`` (the most its uploads may take
before the container starts), the agreed duration and the unsigned window.
"""

from __future__ import annotations

TOLERANCE_MS = 250
TOLERANCE_PERCENT = 1
# Uploads before the container starts: a 2 GiB image and 256 MiB of inputs at the provider's minimum
# rate of 1 MiB/s, plus allowances, take under 2,400 s; an hour is the protocol's bound.
START_ALLOWANCE_MS = 3_600_000
# Rule 2b: no GPU board holds more memory or draws more power than this (today's largest: 288 GB, 1.4 kW).
MAX_GPU_MEMORY_BYTES = 1 << 40
MAX_GPU_WATTS = 2000
MEMORY_SLACK_BYTES = 16 << 20


def amount_due(metered_ms: int, price_micros_per_s: int) -> int:
    """Micro-credits owed for ``metered_ms`` of allocation at ``price_micros_per_s`` (Rule 1)."""
    return metered_ms * price_micros_per_s // 1000


def usage_bound(elapsed_ms: int, units_milli: int) -> int:
    """The most unit-milliseconds ``units_milli``/1000 units can accrue in ``elapsed_ms`` (Rule 2)."""
    if elapsed_ms <= 0:
        return TOLERANCE_MS * max(1, units_milli // 1000)
    base = elapsed_ms * units_milli // 1000
    return base + base * TOLERANCE_PERCENT // 100 + TOLERANCE_MS * max(1, units_milli // 1000)


def memory_bound_bytes(memory_mib: int) -> int:
    """The most ``mem_peak_bytes`` a job limited to ``memory_mib`` can show (Rule 2b)."""
    limit = memory_mib << 20
    return limit + limit * TOLERANCE_PERCENT // 100 + MEMORY_SLACK_BYTES


def gpu_memory_bound_bytes(gpus: int) -> int:
    """The most ``gpu_mem_peak_bytes`` of ``gpus`` GPUs (Rule 2b)."""
    return gpus * MAX_GPU_MEMORY_BYTES


def sm_pct_bound(metered_ms: int, gpus: int) -> int:
    """The most ``gpu_sm_pct_ms`` of ``gpus`` GPUs over ``metered_ms`` (Rule 2b)."""
    return 100 * usage_bound(metered_ms, gpus * 1000) if gpus else 0


def energy_bound_mj(elapsed_ms: int, gpus: int) -> int:
    """The most ``energy_mj`` of ``gpus`` GPU boards ``elapsed_ms`` after the agreement (Rule 2b)."""
    return MAX_GPU_WATTS * usage_bound(elapsed_ms, gpus * 1000) if gpus else 0


def metered_bound(elapsed_ms: int) -> int:
    """The most metered (allocation) milliseconds possible in ``elapsed_ms`` of wall time."""
    return usage_bound(elapsed_ms, 1000)


def metered_within(amount_micros: int, price_micros_per_s: int) -> int:
    """The most metered milliseconds whose ``amount_due`` stays within ``amount_micros``."""
    if price_micros_per_s <= 0:
        return 1 << 62
    return ((amount_micros + 1) * 1000 - 1) // price_micros_per_s


def unsigned_window_ms(interval_ms: int, countersign_timeout_ms: int, grace_ms: int) -> int:
    """The metered time past the last countersigned receipt that an unsigned claim may be owed (Rule 3)."""
    return 2 * interval_ms + countersign_timeout_ms + grace_ms


def unsigned_ceiling(cosigned_metered_ms: int, cosigned_amount: int, price_micros_per_s: int,
                     exposure_cap_micros: int, window_ms: int) -> int:
    """The most (cumulative) amount owed through receipts the buyer did not countersign (Rule 3)."""
    return min(amount_due(cosigned_metered_ms + window_ms, price_micros_per_s),
               cosigned_amount + exposure_cap_micros)


def timeline_end_ms(created_at_ms: int, max_duration_ms: int, window_ms: int) -> int:
    """The latest ``issued_at_ms`` a receipt of the agreement may carry (Rule 4)."""
    return created_at_ms + START_ALLOWANCE_MS + max_duration_ms + window_ms
