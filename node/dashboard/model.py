"""The dashboard's figures from the provider's signed receipts: pure, no IO, ``now_ms`` passed in (STYLE §1).

Rule 1 (earnings): only co-signed receipts earn. A receipt's cumulative ``amount_micros`` minus the one of
the co-signed receipt before it is earned at its ``issued_at_ms``; the buckets (per hour, per day, UTC)
therefore sum to the last co-signed amount of every agreement, exactly. What a provider claimed and the
buyer has not countersigned is ``pending``, apart, and never in a bucket.
Rule 2 (samples): a job's CPU and memory points are the meter's samples as the receipts carry them (one
per receipt interval): CPU cores = Δcpu_core_ms / Δmetered_ms between receipts; memory = the peak so far;
GPU = Δgpu_sm_pct_ms / Δmetered_ms, in SM % (summed over the job's GPUs, so it may pass 100).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
HOURS_SHOWN = 24
DAYS_SHOWN = 30
POINTS_SHOWN = 60  # per job chart: a minute at the default one-second receipts (cost: bench/dashboard.py)


@dataclass(frozen=True)
class Point:
    """One receipt, as the dashboard needs it."""

    seq: int
    issued_at_ms: int
    metered_ms: int
    amount_micros: int
    cpu_core_ms: int
    mem_peak_bytes: int
    gpu_ms: int
    state: str
    reason: str | None
    exit_code: int | None
    cosigned: bool
    gpu_sm_pct_ms: int = 0  # Σ SM % × ms of the job's GPUs (sandbox.metering Rule 3)


def earned_deltas(points: Sequence[Point]) -> list[tuple[int, int]]:
    """Rule 1: (issued_at_ms, micro-credits earned) for each co-signed receipt, in seq order."""
    out, before = [], 0
    for p in points:
        if p.cosigned:
            out.append((p.issued_at_ms, p.amount_micros - before))
            before = p.amount_micros
    return out


def cosigned_total(points: Sequence[Point]) -> int:
    return next((p.amount_micros for p in reversed(points) if p.cosigned), 0)


def pending(points: Sequence[Point]) -> int:
    """Claimed beyond the last co-signed receipt (0 when the last receipt is co-signed)."""
    return max(0, points[-1].amount_micros - cosigned_total(points)) if points else 0


def settled(points: Sequence[Point]) -> bool:
    """A final receipt, co-signed: nothing about this agreement's money can change any more."""
    return bool(points) and points[-1].state == "final" and points[-1].cosigned


def bucket(deltas: Iterable[tuple[int, int]], into: collections.Counter[tuple[str, int]]) -> None:
    for at_ms, micros in deltas:
        into["hour", at_ms - at_ms % HOUR_MS] += micros
        into["day", at_ms - at_ms % DAY_MS] += micros


def earnings(buckets: collections.Counter[tuple[str, int]], total: int, pending_micros: int,
             now_ms: int) -> dict[str, object]:
    """The earnings document (docs/DASHBOARD.md): the last 24 hours and 30 days, every bucket listed."""
    hour0 = now_ms - now_ms % HOUR_MS
    day0 = now_ms - now_ms % DAY_MS
    per_hour = [{"start_ms": t, "micros": buckets.get(("hour", t), 0)}
                for t in range(hour0 - (HOURS_SHOWN - 1) * HOUR_MS, hour0 + 1, HOUR_MS)]
    per_day = [{"start_ms": t, "micros": buckets.get(("day", t), 0)}
               for t in range(day0 - (DAYS_SHOWN - 1) * DAY_MS, day0 + 1, DAY_MS)]
    return {"cosigned_micros": total, "pending_micros": pending_micros, "per_hour": per_hour, "per_day": per_day,
            "today_micros": per_day[-1]["micros"], "this_hour_micros": per_hour[-1]["micros"]}


def samples(points: Sequence[Point]) -> list[dict[str, float | int]]:
    """Rule 2: the last ``POINTS_SHOWN`` samples of one job: seconds metered, CPU cores, memory peak MiB,
    GPU SM %."""
    shown = points[-(POINTS_SHOWN + 1):]
    start = Point(0, 0, 0, 0, 0, 0, 0, "", None, None, False)  # one receipt alone: its rates since the start
    pairs = zip(shown, shown[1:], strict=False) if len(shown) > 1 else [(start, p) for p in shown]
    out: list[dict[str, float | int]] = []
    for before, p in pairs:
        span = p.metered_ms - before.metered_ms
        cores = (p.cpu_core_ms - before.cpu_core_ms) / span if span > 0 else 0.0
        gpu = (p.gpu_sm_pct_ms - before.gpu_sm_pct_ms) / span if span > 0 else 0.0
        out.append({"t_s": p.metered_ms / 1000, "cpu_cores": round(max(cores, 0.0), 3),
                    "mem_mib": round(p.mem_peak_bytes / (1 << 20), 1), "gpu_pct": round(max(gpu, 0.0), 1),
                    "at_ms": p.issued_at_ms})
    return out
