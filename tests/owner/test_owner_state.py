"""The owner state machine (node.owner_state) as tables over recorded readings and an injected clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from node.owner_prefs import OwnerPrefs, parse_owner
from node.owner_signals import Readings
from node.owner_state import (
    AVAILABLE,
    OUTSIDE_SCHEDULE,
    OWNER_ACTIVE,
    PAUSE,
    RESUME,
    STOP,
    OwnerHold,
    Verdict,
    availability,
    decide,
    window_left_min,
)
from p2p.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")


def prefs(**table: object) -> OwnerPrefs:
    p = parse_owner(table, lambda k, m: ConfigError(f"{k}: {m}"))
    assert p is not None
    return p


CAFE = prefs(schedule={"all": ["22:00-08:00"], "sat": ["20:00-10:00"], "sun": []})


@pytest.mark.parametrize("when, left_min", [
    # 2026-12-07 is a Monday.
    (datetime(2026, 12, 7, 21, 59), 0),
    (datetime(2026, 12, 7, 22, 0), 600),  # Monday 22:00 -> Tuesday 08:00
    (datetime(2026, 12, 8, 7, 30), 30),  # Tuesday morning: Monday's window, across midnight
    (datetime(2026, 12, 8, 8, 0), 0),
    (datetime(2026, 12, 12, 21, 0), 780),  # Saturday's own window: 20:00 -> Sunday 10:00
    (datetime(2026, 12, 13, 9, 0), 60),  # Sunday morning is Saturday's window, though Sunday has none
    (datetime(2026, 12, 13, 23, 0), 0),  # Sunday night: no window
    (datetime(2026, 12, 14, 3, 0), 0),  # Monday 03:00: Sunday had no window to cross into it
])
def test_cafe_windows_across_midnight_and_weekday_overrides(when, left_min):
    assert window_left_min(CAFE.schedule, when) == left_min


def test_windows_join_across_days_and_an_open_schedule_never_closes():
    always = prefs(schedule={"all": ["00:00-24:00"]})
    assert window_left_min(always.schedule, datetime(2026, 12, 9, 12, 0)) is None
    assert window_left_min(None, datetime(2026, 12, 9, 12, 0)) is None
    weekdays = prefs(schedule={"all": ["00:00-24:00"], "sat": [], "sun": []})
    assert window_left_min(weekdays.schedule, datetime(2026, 12, 11, 12, 0)) == 12 * 60  # Friday noon -> Sat 00:00
    assert window_left_min(weekdays.schedule, datetime(2026, 12, 7, 0, 0)) == 5 * 1440


def test_dst_the_window_is_on_the_wall_clock():
    night = prefs(schedule={"all": ["01:00-04:00"]})
    spring = datetime(2026, 3, 29, 1, 30, tzinfo=BERLIN)  # clocks jump 02:00 -> 03:00
    v = decide(night, Readings(now_s=spring.timestamp()), spring)
    assert v.state == AVAILABLE and v.window_end_s is not None
    assert v.window_end_s - spring.timestamp() == 1.5 * 3600  # 04:00 CEST is 1.5 real hours away, not 2.5
    autumn = datetime(2026, 10, 25, 1, 30, tzinfo=BERLIN)  # 03:00 -> 02:00: one hour longer
    v = decide(night, Readings(now_s=autumn.timestamp()), autumn)
    assert v.window_end_s is not None and v.window_end_s - autumn.timestamp() == 3.5 * 3600
    after = datetime(2026, 3, 29, 4, 0, tzinfo=BERLIN)
    assert decide(night, Readings(now_s=after.timestamp()), after).state == OUTSIDE_SCHEDULE


NOW = datetime(2026, 12, 9, 12, 0)
T = NOW.timestamp()
BASE = prefs(idle_s=60, cpu_busy_pct=50, exclusive_apps=["steam"], exclusive_gpu_apps=["blender"],
             gpu_max_temp_c=85, schedule={"all": ["09:00-18:00"]})


@pytest.mark.parametrize("readings, state, gpu_only, words", [
    (Readings(T), AVAILABLE, False, ""),
    (Readings(T, last_input_s=T - 10), OWNER_ACTIVE, False, "terminal used 10 s ago"),
    (Readings(T, last_input_s=T - 60), AVAILABLE, False, ""),
    (Readings(T, foreign_gpu_pids=frozenset({437})), OWNER_ACTIVE, False, "pid 437"),
    (Readings(T, foreign_gpu_pids=frozenset()), AVAILABLE, False, ""),
    (Readings(T, other_cpu_pct=51.0), OWNER_ACTIVE, False, "51 % of the CPU"),
    (Readings(T, other_cpu_pct=50.0), AVAILABLE, False, ""),
    (Readings(T, running=frozenset({"steam"})), OWNER_ACTIVE, False, "steam is running"),
    (Readings(T, running=frozenset({"blender"})), OWNER_ACTIVE, True, "blender is running"),
    (Readings(T, on_battery=True), OWNER_ACTIVE, False, "battery"),
    (Readings(T, gpu_temp_c=85), OWNER_ACTIVE, True, "GPU at 85"),
    (Readings(T, gpu_temp_c=84), AVAILABLE, False, ""),
    # The first reason wins: input over an exclusive GPU application.
    (Readings(T, last_input_s=T, running=frozenset({"blender"})), OWNER_ACTIVE, False, "terminal used"),
])
def test_each_signal_decides(readings, state, gpu_only, words):
    v = decide(BASE, readings, NOW)
    assert (v.state, v.gpu_only) == (state, gpu_only) and words in v.reason
    assert v.window_end_s == datetime(2026, 12, 9, 18, 0).timestamp()


def test_switched_off_signals_do_not_count():
    off = prefs(input=False, foreign_gpu=False, sell_on_battery=True)
    r = Readings(T, last_input_s=T, foreign_gpu_pids=frozenset({1}), on_battery=True, other_cpu_pct=100.0)
    assert decide(off, r, NOW).state == AVAILABLE


def test_outside_the_schedule_comes_first():
    v = decide(BASE, Readings(T, last_input_s=T), datetime(2026, 12, 9, 19, 0))
    assert v.state == OUTSIDE_SCHEDULE and "schedule" in v.reason and v.window_end_s is None


ACTIVE = Verdict(OWNER_ACTIVE, "x")
GPU_ONLY = Verdict(OWNER_ACTIVE, "x", gpu_only=True)
GPU_BUSY = Verdict(OWNER_ACTIVE, "x", gpu_in_use=True)
FREE = Verdict(AVAILABLE)
A, G = b"a", b"g"  # a CPU job and a GPU job


@pytest.mark.parametrize("p, steps", [
    # on_return = stop: paused at once, resumed if the owner leaves within the notice...
    (prefs(notice_s=30), [(0, ACTIVE, [(PAUSE, A)]), (29, ACTIVE, []), (29.5, FREE, [(RESUME, A)]),
                          (40, FREE, [])]),
    # ... else stopped once, at the notice's end, and never resumed.
    (prefs(notice_s=30), [(0, ACTIVE, [(PAUSE, A)]), (30, ACTIVE, [(STOP, A)]), (31, ACTIVE, []), (32, FREE, [])]),
    # notice 0: paused and stopped in one step.
    (prefs(notice_s=0), [(0, ACTIVE, [(PAUSE, A), (STOP, A)])]),
    # on_return = pause: held up to max_paused_s.
    (prefs(on_return="pause", notice_s=5, max_paused_s=60), [(0, ACTIVE, [(PAUSE, A)]), (30, ACTIVE, []),
                                                              (60, ACTIVE, [(STOP, A)])]),
])
def test_hold_table_for_a_cpu_job(p, steps):
    hold = OwnerHold(p)
    for now, verdict, expected in steps:
        assert hold.step(verdict, {A: False}, now) == expected, now


def test_gpu_only_verdicts_spare_cpu_jobs_and_a_gpu_wanted_elsewhere_is_not_held():
    hold = OwnerHold(prefs(on_return="pause", notice_s=5, max_paused_s=600))
    assert hold.step(GPU_ONLY, {A: False, G: True}, 0) == [(PAUSE, G)]
    assert hold.step(FREE, {A: False, G: True}, 1) == [(RESUME, G)]
    assert hold.step(GPU_BUSY, {A: False, G: True}, 2) == [(PAUSE, A), (PAUSE, G)]
    assert hold.step(GPU_BUSY, {A: False, G: True}, 7) == [(STOP, G)]  # notice_s, not max_paused_s
    assert hold.paused_since(A) == 2
    assert hold.step(GPU_BUSY, {A: False}, 8) == []  # the GPU job is gone: forgotten
    assert hold.stopped == set()


def _ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=BERLIN).timestamp() * 1000)


# Rule 4: what the offer states. 2026-12-07 is a Monday; CAFE sells 22:00-08:00 (Saturday 20:00-10:00).
@pytest.mark.parametrize("when, end_ms", [
    ((2026, 12, 7, 23, 15, 42, 500_000), _ms(2026, 12, 8, 8, 0)),  # across midnight, to Tuesday 08:00
    ((2026, 12, 7, 22, 0), _ms(2026, 12, 8, 8, 0)),  # the same end from the window's first minute
    ((2026, 12, 8, 7, 59, 59), _ms(2026, 12, 8, 8, 0)),  # and from its last second
    ((2026, 12, 12, 21, 0), _ms(2026, 12, 13, 10, 0)),  # Saturday's own window
    ((2026, 12, 7, 21, 59, 59), 0),  # outside: nothing free, no end to state
    ((2026, 12, 8, 8, 0), 0),
])
def test_the_offer_states_the_windows_end_across_midnight(when, end_ms):
    assert availability(CAFE, datetime(*when, tzinfo=BERLIN)) == (end_ms, 30_000, True)


def test_the_windows_end_is_on_the_wall_clock_across_a_dst_change():
    night = prefs(schedule={"all": ["22:00-08:00"]})  # 2026-10-25 03:00 CEST is 02:00 CET
    assert availability(night, datetime(2026, 10, 24, 23, 0, tzinfo=BERLIN))[0] == _ms(2026, 10, 25, 8, 0)
    assert _ms(2026, 10, 25, 8, 0) - _ms(2026, 10, 24, 23, 0) == 10 * 3_600_000  # 9 wall-clock hours


def test_preemptible_when_the_owner_section_can_take_the_machine_back():
    monday = datetime(2026, 12, 7, 12, 0, tzinfo=BERLIN)
    assert availability(None, monday) == (0, 0, False)  # no [owner]: sold around the clock
    assert availability(prefs(), monday) == (0, 30_000, True)  # input, foreign GPU and battery watched
    quiet = {"input": False, "foreign_gpu": False, "sell_on_battery": True}
    assert availability(prefs(**quiet), monday) == (0, 0, False)
    assert availability(prefs(**quiet, schedule={"all": ["00:00-24:00"]}), monday) == (0, 0, False)  # never closes
    assert availability(prefs(**quiet, schedule={"all": ["00:00-24:00"], "sun": []}), monday) == (
        _ms(2026, 12, 13, 0, 0), 30_000, True)
    for signal in ({"cpu_busy_pct": 80}, {"exclusive_apps": ["game"]}, {"exclusive_gpu_apps": ["blender"]},
                   {"gpu_max_temp_c": 85}, {"sell_on_battery": False}):
        assert availability(prefs(**{**quiet, **signal}), monday) == (0, 30_000, True), signal
    paused = prefs(on_return="pause", notice_s=60, max_paused_s=900)
    assert availability(paused, monday) == (0, 60_000, True)  # a GPU job's notice, the least any job gets
