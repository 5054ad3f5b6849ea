"""The process's two clocks in integer milliseconds: the one place that reads them.

Pure cores never read a clock: ``now`` is passed in. The shells take it from here.

Rule 1: ``wall_ms`` is for what is written down and compared with another machine (receipts, offers'
expiry, stored rows); ``monotonic_ms`` is for durations and timeouts in this process (the exposure
guard, the buyer's countersignature deadlines), which a wall clock stepping back or ahead must not
stretch or cut.
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000
