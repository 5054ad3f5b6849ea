"""The operator's ``[owner]`` preferences (issue 18): when this machine may be sold, what counts as its
owner using it, and what a job gets when the owner comes back. Pure: parsed from the TOML document's
``owner`` table, checked completely (node.config Rules 1 and 2: one line per mistake, unknown keys are
errors).

Rule 1: without an ``[owner]`` section nothing is watched and the machine is sold around the clock (the
behaviour before issue 18). With one, every field has a default, so ``[owner]`` alone means "sell only
when nobody has touched the machine for ``idle_s``".
Rule 2: a schedule window is ``"HH:MM-HH:MM"`` in local time; an end not after its start crosses midnight
(``"22:00-08:00"`` listed under ``fri`` runs from Friday 22:00 to Saturday 08:00). A weekday's own line
replaces ``all`` for that day; an empty list means "not that day". No ``[owner.schedule]``: every day,
all day.
Rule 3: on the owner's return a job is frozen at once. ``on_return = "stop"``: it is stopped
(``owner_preempt``) when the owner is still there after ``notice_s``; ``"pause"``: it is held frozen up
to ``max_paused_s``, then stopped. A GPU job whose GPU the owner's own program wants is stopped after
``notice_s`` either way (a frozen CUDA process keeps its GPU memory).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2p.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
PAUSE, STOP = "pause", "stop"

# The whole-number fields, their defaults and ranges (node.config Rule 3).
WHOLE: dict[str, tuple[int, int, int]] = {
    "idle_s": (300, 0, 86_400),
    "cpu_busy_pct": (0, 0, 100),
    "gpu_max_temp_c": (0, 0, 150),
    "notice_s": (30, 0, 3_600),
    "max_paused_s": (600, 0, 86_400),
    "poll_ms": (250, 50, 10_000),
}
BOOLS: dict[str, bool] = {"input": True, "foreign_gpu": True, "sell_on_battery": False}
LISTS = ("exclusive_apps", "exclusive_gpu_apps")
KEYS = set(WHOLE) | set(BOOLS) | set(LISTS) | {"on_return", "schedule"}

_WINDOW = re.compile(r"^([0-2][0-9]):([0-5][0-9])-([0-2][0-9]):([0-5][0-9])$")

Window = tuple[int, int]  # (start, end) in minutes after midnight; end <= start crosses midnight (Rule 2)


@dataclass(frozen=True)
class OwnerPrefs:
    idle_s: int = 300
    input: bool = True  # terminal and input activity counts as use
    foreign_gpu: bool = True  # a GPU process that is no job's counts as use
    cpu_busy_pct: int = 0  # other programs' CPU above this % of the machine counts as use; 0: not watched
    exclusive_apps: tuple[str, ...] = ()  # while one runs: no work at all
    exclusive_gpu_apps: tuple[str, ...] = ()  # while one runs: no GPU work
    sell_on_battery: bool = False
    gpu_max_temp_c: int = 0  # 0: not watched
    notice_s: int = 30
    on_return: str = STOP
    max_paused_s: int = 600
    poll_ms: int = 250
    # weekday index (0 = Monday) -> its windows (Rule 2); None: no schedule, always inside
    schedule: dict[int, tuple[Window, ...]] | None = field(default=None)

    @property
    def hold_s(self) -> int:
        """How long a frozen job waits for the owner to leave (Rule 3)."""
        return self.notice_s if self.on_return == STOP else self.max_paused_s


Fail = Callable[[str, str], ConfigError]


def parse_owner(table: Any, fail: Fail) -> OwnerPrefs | None:
    """``[owner]`` as OwnerPrefs (None when absent, Rule 1); ``fail(key, problem)`` makes the one-line error."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise fail("owner", "expected a [table]")
    unknown = set(table) - KEYS
    if unknown:
        raise fail(f"owner.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for key, (default, lo, hi) in WHOLE.items():
        value = table.get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            raise fail(f"owner.{key}", f"expected a whole number in {lo}..{hi}, got {_show(value)}")
        values[key] = value
    for key, default in BOOLS.items():
        value = table.get(key, default)
        if type(value) is not bool:
            raise fail(f"owner.{key}", f"expected true or false, got {_show(value)}")
        values[key] = value
    for key in LISTS:
        names = table.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise fail(f"owner.{key}", f"expected a list of program names, got {_show(names)}")
        bad = next((n for n in names if "/" in n or len(n) > 255), None)
        if bad is not None:
            raise fail(f"owner.{key}", f"{bad!r} is not a program name (no path: the name as `ps` shows it)")
        values[key] = tuple(names)
    on_return = table.get("on_return", STOP)
    if on_return not in (PAUSE, STOP):
        raise fail("owner.on_return", f'expected "pause" or "stop", got {_show(on_return)}')
    if on_return == PAUSE and values["max_paused_s"] < values["notice_s"]:
        raise fail("owner.max_paused_s", f"is {values['max_paused_s']}, less than notice_s ({values['notice_s']}): "
                   "a paused job must be held at least the notice")
    return OwnerPrefs(on_return=on_return, schedule=parse_schedule(table.get("schedule"), fail), **values)


def parse_schedule(table: Any, fail: Fail) -> dict[int, tuple[Window, ...]] | None:
    """``[owner.schedule]`` (Rule 2): ``all`` and weekday keys, each a list of ``"HH:MM-HH:MM"``."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise fail("owner.schedule", "expected a [table] of weekday = [\"HH:MM-HH:MM\", ...]")
    unknown = set(table) - {"all", *DAYS}
    if unknown:
        raise fail(f"owner.schedule.{sorted(unknown)[0]}", "unknown key (use all, mon, tue, wed, thu, fri, sat, sun)")
    base = _windows(table.get("all", ["00:00-24:00"]), "owner.schedule.all", fail)
    return {i: _windows(table[day], f"owner.schedule.{day}", fail) if day in table else base
            for i, day in enumerate(DAYS)}


def _windows(value: Any, key: str, fail: Fail) -> tuple[Window, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f'expected a list of "HH:MM-HH:MM" windows, got {_show(value)}')
    out = []
    for text in value:
        m = _WINDOW.match(text.strip())
        if m is None:
            raise fail(key, f'{text!r} is not a window "HH:MM-HH:MM" (24-hour local time)')
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or (h2 == 24 and m2 != 0):
            raise fail(key, f"{text!r}: hours run 00..23 (24:00 only as an end)")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end % 1440 and not (start == 0 and end == 1440):
            raise fail(key, f"{text!r} is empty; write \"00:00-24:00\" for the whole day")
        out.append((start, end))
    return tuple(out)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
