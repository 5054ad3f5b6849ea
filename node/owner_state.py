"""Owner first (issue 18), pure: the schedule, the one state the signals add up to, and what that state does
to each running job. Time is passed in (a wall-clock ``now_s`` and the local time it is).

    decide(prefs, readings, local) -> Verdict: available | owner_active | outside_schedule, with a reason
    OwnerHold.step(verdict, jobs, now_s) -> [(PAUSE|RESUME|STOP, agreement id), ...]

Rule 1: the schedule is read on the local wall clock (node.owner_prefs Rule 2), so a window "09:00-17:00"
means those hours on the clocks in the room on a day the clocks change too. A window's end is the end of
the continuous run of windows from now (adjacent days' windows join), or None when the schedule never
closes.
Rule 2: outside the schedule comes first, then use of the whole machine (input, a GPU process that is no
job's, other programs' CPU, an exclusive application, battery), then what only rules out GPU work (an
exclusive GPU application, the GPU temperature ceiling). The first reason found is the one shown.
Rule 3: a job hit by the verdict is paused at once; it resumes when the verdict clears within its hold, and
is stopped once, when the hold runs out (owner_prefs Rule 3: ``hold_s``; a GPU job while another program
uses the GPU: ``notice_s``, since a frozen CUDA process keeps its memory). A stopped job is never resumed.
Rule 4 (the offer's availability, issues 18 and 19): ``availability`` says what the signed offer states.
``window_end_ms`` is Rule 1's end of the window that holds now, on whole minutes (the schedule's unit, so
the offer does not change between ticks), or 0 when no schedule ends it: none configured, one that never
closes, or now outside it (the offer has nothing free then and the verdict stops every job). The machine
is ``preemptible`` when the owner section can take it back: any activity signal is watched (input, a
foreign GPU process, other programs' CPU, an exclusive application, battery, the GPU temperature) or the
schedule closes. ``notice_ms`` is then the least notice a job gets before it is stopped, ``notice_s``
(a GPU job's notice even with ``on_return = "pause"``; ``max_paused_s`` is never less), else 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from node.owner_prefs import OwnerPrefs, Window
from node.owner_signals import Readings, app_use, battery_use, cpu_use, gpu_use, input_use, temperature_use

AVAILABLE, OWNER_ACTIVE, OUTSIDE_SCHEDULE = "available", "owner_active", "outside_schedule"
PAUSE, RESUME, STOP = "pause", "resume", "stop"
WEEK_MIN = 7 * 1440


@dataclass(frozen=True)
class Verdict:
    state: str
    reason: str = ""
    gpu_only: bool = False  # only GPU work is ruled out (Rule 2)
    window_end_s: float | None = None  # the current window's end (Rule 1); None: it never closes / outside
    gpu_in_use: bool = False  # another program holds the GPU (Rule 3)

    def blocks(self, gpu_job: bool) -> bool:
        return self.state != AVAILABLE and (gpu_job or not self.gpu_only)


def _intervals(schedule: Mapping[int, tuple[Window, ...]]) -> list[tuple[int, int]]:
    """The windows as (start, length) in minutes of the week (Monday 00:00 = 0)."""
    out = []
    for day, windows in schedule.items():
        for start, end in windows:
            length = end - start if end > start else end + 1440 - start
            out.append((day * 1440 + start, length))
    return out


def window_left_min(schedule: Mapping[int, tuple[Window, ...]] | None, local: datetime) -> float | None:
    """Minutes of wall clock left in the window that contains ``local`` (0: outside; None: never closes)."""
    if schedule is None:
        return None
    at = local.weekday() * 1440 + local.hour * 60 + local.minute + local.second / 60
    intervals = _intervals(schedule)
    reach = 0.0
    for _ in range(len(intervals) + 1):  # each pass extends through at least one window, or stops
        cur = (at + reach) % WEEK_MIN
        ends = [length - (cur - start) % WEEK_MIN for start, length in intervals if (cur - start) % WEEK_MIN < length]
        step = max(ends, default=0.0)
        if step <= 0:
            return reach
        reach += step
        if reach >= WEEK_MIN:
            return None
    return reach


def window_end_s(local: datetime, left_min: float) -> float:
    """Rule 1: the wall-clock end, as a timestamp in ``local``'s zone (a DST change in between counts)."""
    naive = local.replace(tzinfo=None) + timedelta(minutes=left_min)
    return naive.replace(tzinfo=local.tzinfo).timestamp() if local.tzinfo else naive.timestamp()


def decide(prefs: OwnerPrefs, r: Readings, local: datetime) -> Verdict:
    """Rule 2."""
    left = window_left_min(prefs.schedule, local)
    if left is not None and left <= 0:
        return Verdict(OUTSIDE_SCHEDULE, "outside the owner's schedule")
    end = window_end_s(local, left) if left is not None else None
    gpu_busy = bool(prefs.foreign_gpu and r.foreign_gpu_pids)
    whole = [input_use(r.now_s, r.last_input_s, prefs.idle_s) if prefs.input else None,
             gpu_use(r.foreign_gpu_pids) if prefs.foreign_gpu else None,
             cpu_use(r.other_cpu_pct, prefs.cpu_busy_pct),
             app_use(r.running, prefs.exclusive_apps),
             battery_use(r.on_battery, prefs.sell_on_battery)]
    reason = next((w for w in whole if w), None)
    if reason is not None:
        return Verdict(OWNER_ACTIVE, reason, window_end_s=end, gpu_in_use=gpu_busy)
    gpu = next((w for w in (app_use(r.running, prefs.exclusive_gpu_apps),
                            temperature_use(r.gpu_temp_c, prefs.gpu_max_temp_c)) if w), None)
    if gpu is not None:
        return Verdict(OWNER_ACTIVE, gpu + " (GPU work only)", gpu_only=True, window_end_s=end)
    return Verdict(AVAILABLE, "", window_end_s=end)


def availability(prefs: OwnerPrefs | None, local_now: datetime) -> tuple[int, int, bool]:
    """Rule 4: (window_end_ms as epoch ms, 0 for no end; notice_ms; preemptible) for the offer, at
    ``local_now`` (an aware local time; a naive one is read as this machine's zone)."""
    if prefs is None:  # owner_prefs Rule 1: sold around the clock
        return 0, 0, False
    local = local_now.replace(second=0, microsecond=0)
    left = window_left_min(prefs.schedule, local)
    end_ms = round(window_end_s(local, left) * 1000) if left else 0
    watched = (prefs.input or prefs.foreign_gpu or prefs.cpu_busy_pct > 0 or bool(prefs.exclusive_apps)
               or bool(prefs.exclusive_gpu_apps) or not prefs.sell_on_battery or prefs.gpu_max_temp_c > 0)
    closes = prefs.schedule is not None and left is not None
    preemptible = watched or closes
    return end_ms, prefs.notice_s * 1000 if preemptible else 0, preemptible


@dataclass
class OwnerHold:
    """Rule 3 over the running jobs: ``step`` says which to pause, resume or stop."""

    prefs: OwnerPrefs
    frozen: dict[bytes, float] = field(default_factory=dict)  # agreement id -> when it was paused
    stopped: set[bytes] = field(default_factory=set)

    def step(self, verdict: Verdict, jobs: Mapping[bytes, bool], now_s: float) -> list[tuple[str, bytes]]:
        """``jobs``: the running jobs' agreement ids -> whether the job has GPUs."""
        out: list[tuple[str, bytes]] = []
        for ag, gpu_job in jobs.items():
            if ag in self.stopped:
                continue
            if verdict.blocks(gpu_job):
                if ag not in self.frozen:
                    self.frozen[ag] = now_s
                    out.append((PAUSE, ag))
                since = self.frozen[ag]
                hold = self.prefs.notice_s if gpu_job and verdict.gpu_in_use else self.prefs.hold_s
                if now_s - since >= hold:
                    self.stopped.add(ag)
                    out.append((STOP, ag))
            elif self.frozen.pop(ag, None) is not None:
                out.append((RESUME, ag))
        for ag in set(self.frozen) - set(jobs):
            del self.frozen[ag]
        self.stopped &= set(jobs)
        return out

    def paused_since(self, ag: bytes) -> float | None:
        return self.frozen.get(ag)
