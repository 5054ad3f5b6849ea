"""Metering arithmetic: run-state clock, cumulative counters, GPU integration (pure, no clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.cgroups import CgroupReading
from sandbox.metering import MOVES, STATES, GpuReading, Meter, cpu_bound_core_ms


def cg(cpu_ms: int, mem: int = 1 << 20, peak: int | None = None) -> CgroupReading:
    return CgroupReading(cpu_ms * 1_000_000, mem, peak, 0, 1)


# (events as (name, now_ms), now_ms of the sample, expected wall_ms)
WALL_CASES = [
    ([], 5_000, 0),
    ([("start", 1_000)], 3_500, 2_500),
    ([("start", 1_000), ("pause", 2_000)], 9_000, 1_000),
    ([("start", 1_000), ("pause", 2_000), ("resume", 7_000)], 9_000, 3_000),
    ([("start", 0), ("pause", 100), ("pause", 200), ("resume", 300), ("resume", 400)], 500, 300),
    ([("start", 0), ("stop", 2_000)], 10_000, 2_000),
    ([("start", 0), ("pause", 1_000), ("stop", 5_000)], 10_000, 1_000),
    ([("start", 0), ("stop", 1_000), ("start", 2_000), ("resume", 3_000)], 10_000, 1_000),
    ([("resume", 0), ("pause", 10)], 100, 0),
]


@pytest.mark.parametrize("events, now, wall", WALL_CASES)
def test_wall_clock_excludes_paused_and_stopped_time(events, now, wall):
    meter = Meter()
    for name, at in events:
        meter.event(name, at)
    assert meter.sample(now).wall_ms == wall


def test_moves_table_only_names_known_states():
    assert {s for pair in MOVES for s in pair[:1]} | set(MOVES.values()) <= set(STATES)


def test_cpu_and_memory_are_cumulative_and_monotonic():
    meter = Meter()
    meter.event("start", 0)
    assert meter.observe(1_000, cg(950, mem=10, peak=40)).cpu_core_ms == 950
    s = meter.observe(2_000, cg(1_930, mem=30, peak=None))
    assert (s.cpu_core_ms, s.mem_peak_bytes) == (1_930, 40)
    s = meter.observe(3_000, cg(5, mem=5, peak=5))  # a counter that went backwards adds nothing
    assert (s.cpu_core_ms, s.mem_peak_bytes) == (1_930, 40)
    s = meter.observe(4_000, None)  # a failed read keeps the last values
    assert (s.cpu_core_ms, s.seq) == (1_930, 4)


def test_cpu_rounds_down_to_whole_milliseconds():
    meter = Meter()
    meter.event("start", 0)
    assert meter.observe(10, CgroupReading(1_999_999, 0, None, None, None)).cpu_core_ms == 1


def test_gpu_sm_integrated_over_running_time_only():
    meter = Meter()
    meter.event("start", 0)
    meter.observe(1_000, gpu=GpuReading(3 << 30, 98, 1_000_000))
    meter.observe(2_000, gpu=GpuReading(2 << 30, 50, 1_700_000))
    meter.event("pause", 2_500)  # the last reading (50 %) covers 2 000..2 500
    meter.observe(4_000, gpu=GpuReading(2 << 30, 0, 1_800_000))  # paused: no SM time
    meter.event("resume", 5_000)
    s = meter.observe(6_000, gpu=GpuReading(1 << 30, 10, 2_000_000))
    assert s.gpu_sm_pct_ms == 98 * 1_000 + 50 * 1_000 + 50 * 500 + 10 * 1_000
    assert s.gpu_mem_peak_bytes == 3 << 30
    assert s.energy_mj == 1_000_000
    assert s.wall_ms == 3_500


def test_energy_is_a_delta_and_unknown_energy_is_skipped():
    meter = Meter()
    meter.event("start", 0)
    meter.observe(1_000, gpu=GpuReading(0, 0, None))
    meter.observe(2_000, gpu=GpuReading(0, 0, 2_503_954))
    assert meter.observe(3_000, gpu=GpuReading(0, 0, 2_584_653)).energy_mj == 80_699


@given(st.lists(st.tuples(st.sampled_from(["start", "pause", "resume", "stop", "read"]),
                          st.integers(0, 5_000), st.integers(0, 10_000)), max_size=40))
def test_samples_never_decrease_and_wall_never_exceeds_elapsed(steps):
    meter, now, cpu, last = Meter(), 0, 0, None
    for name, dt, dcpu in steps:
        now += dt
        if name == "read":
            cpu += dcpu
            s = meter.observe(now, cg(cpu), GpuReading(dcpu, dcpu % 101, cpu))
        else:
            meter.event(name, now)
            s = meter.sample(now)
        assert s.wall_ms <= now
        if last is not None:
            for field in ("wall_ms", "cpu_core_ms", "mem_peak_bytes", "gpu_mem_peak_bytes",
                          "gpu_sm_pct_ms", "energy_mj"):
                assert getattr(s, field) >= getattr(last, field), field
            assert s.seq == last.seq + 1
        last = s


@pytest.mark.parametrize("wall, millicores, bound", [
    (1_000, 1_000, 1_100), (3_000, 500, 1_550), (0, 2_000, 200),
])
def test_cpu_bound(wall, millicores, bound):
    assert cpu_bound_core_ms(wall, millicores) == bound


def test_samples_never_claim_more_cpu_than_the_limit_allows():
    meter = Meter(cpus_millicores=500)
    meter.event("start", 1_000)
    assert meter.observe(1_000, cg(80)).cpu_core_ms == 50  # processes ran before `start` returned
    assert meter.observe(2_000, cg(400)).cpu_core_ms == 400
    assert meter.observe(3_000, cg(2_000)).cpu_core_ms == 1_050
    meter.event("pause", 3_000)
    assert meter.observe(9_000, cg(2_000)).cpu_core_ms == 1_050  # paused: the bound stays put


def test_oom_kills_are_kept_as_evidence():
    meter = Meter()
    meter.event("start", 0)
    meter.observe(1_000, CgroupReading(0, 0, None, 1, 1))
    meter.observe(2_000, CgroupReading(0, 0, None, None, 1))  # v2 without memory.events: unknown
    assert meter.oom_kills == 1


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False), st.sampled_from([0.25, 1.0, 2.0, 5.0]))
def test_every_job_of_a_process_samples_on_one_grid(now, interval):
    from sandbox.meter import grid_start

    start = grid_start(now, interval)
    assert start <= now < start + interval
    assert start / interval == int(start / interval)


async def test_the_metronome_sets_each_event_at_its_time_and_not_before(autojump_clock):
    import trio

    from sandbox.meter import metronome

    clock = metronome()
    assert metronome() is clock  # one per trio run
    start = trio.current_time()
    fired: list[tuple[str, float]] = []

    async def wait(name: str, event: trio.Event) -> None:
        await event.wait()
        fired.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        for name, delay in [("b", 2.0), ("a", 1.0), ("a2", 1.0), ("c", 3.0)]:
            nursery.start_soon(wait, name, clock.at(start + delay))
        await trio.sleep(0.5)
        nursery.start_soon(wait, "early", clock.at(start + 0.75))  # earlier than the one being slept to
        nursery.start_soon(wait, "past", clock.at(start - 1.0))  # already due: at once
    # trio wakes tasks due together in no set order
    assert sorted((round(t, 6), name) for name, t in fired) == [
        (0.5, "past"), (0.75, "early"), (1.0, "a"), (1.0, "a2"), (2.0, "b"), (3.0, "c")]
    assert [t for _, t in fired] == sorted(t for _, t in fired)
    assert not clock._due and not clock._running  # nothing left behind; the next call starts afresh
    await clock.at(trio.current_time() + 1).wait()
