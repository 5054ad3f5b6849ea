"""The owner watch's reader and its effect on the market (node.owner_watch), on this machine."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import trio

from node.owner_prefs import OwnerPrefs
from node.owner_state import AVAILABLE, OUTSIDE_SCHEDULE, OWNER_ACTIVE, Verdict
from node.owner_watch import CPU_WINDOW_S, SignalReader, apply_verdict, owner_status


def test_the_reader_watches_only_what_the_preferences_ask_and_what_the_machine_has():
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        reader = SignalReader(OwnerPrefs(), (path,), ["GPU-none"], list, set)
        r = reader.read(time.time(), time.monotonic())
        assert reader.devices == [path] and r.last_input_s is not None
        assert r.foreign_gpu_pids is None and r.other_cpu_pct is None  # no NVML here; CPU not watched
        assert not reader.watches_gpu and reader.nvml_problem
        off = SignalReader(OwnerPrefs(input=False, cpu_busy_pct=50), (path,), [], list, set)
        r = off.read(time.time(), time.monotonic())
        assert off.devices == [] and r.last_input_s is None
        time.sleep(0.1)
        assert off.read(time.time(), time.monotonic()).other_cpu_pct is None  # Rule 4: the window is not full yet
        time.sleep(CPU_WINDOW_S)  # a window of /proc/stat reads
        assert off.read(time.time(), time.monotonic()).other_cpu_pct is not None
        reader.close()
    finally:
        os.close(master)
        os.close(slave)


def _runtime(accepting: bool = True) -> SimpleNamespace:
    return SimpleNamespace(owner=None, accepting=accepting, market=SimpleNamespace(accepting=accepting),
                           changed=trio.Event())


def test_apply_verdict_closes_the_market_with_the_reason_and_reopens_it():
    rt = _runtime()
    apply_verdict(rt, Verdict(OWNER_ACTIVE, "steam is running (an exclusive application)"))
    assert rt.market.accepting == "owner_active: steam is running (an exclusive application)"
    assert rt.changed.is_set() and owner_status(rt.owner)["state"] == OWNER_ACTIVE
    apply_verdict(rt, Verdict(OWNER_ACTIVE, "GPU at 90 °C", gpu_only=True))
    assert rt.market.accepting is True  # CPU jobs still sell; the offer has no free GPU
    apply_verdict(rt, Verdict(OUTSIDE_SCHEDULE, "outside the owner's schedule"))
    assert str(rt.market.accepting).startswith("outside_schedule: ")
    apply_verdict(rt, Verdict(AVAILABLE, window_end_s=1_800_000_000.5))
    assert rt.market.accepting is True and owner_status(rt.owner)["window_end_ms"] == 1_800_000_000_500
    assert owner_status(None) is None
    rt.changed = trio.Event()
    apply_verdict(rt, Verdict(OWNER_ACTIVE, "keyboard or terminal used 4 s ago"), changed=False)
    assert not rt.changed.is_set() and "4 s ago" in str(rt.market.accepting)  # an aging reason: no new offer


def test_a_provider_shutting_down_is_never_reopened_by_the_owner_leaving():
    rt = _runtime(accepting=False)
    apply_verdict(rt, Verdict(AVAILABLE))
    assert rt.market.accepting is False


def test_suanli_status_shows_the_owner_state_and_reason(monkeypatch, capsys, tmp_path):
    import argparse

    import node.commands.provide as provide

    status = {"peer_id": "12D3KooWx", "addrs": [], "offer": None, "earned_micros": 0, "jobs": [], "last_errors": [],
              "owner": owner_status(Verdict(OWNER_ACTIVE, "keyboard or terminal used 3 s ago (idle_s = 300)"))}
    monkeypatch.setattr(provide, "query", lambda path: {"status": status})
    assert provide.cmd_status(argparse.Namespace(data_dir=str(tmp_path), json=False)) == 0
    assert "owner      owner_active: keyboard or terminal used 3 s ago (idle_s = 300)\n" in capsys.readouterr().out
