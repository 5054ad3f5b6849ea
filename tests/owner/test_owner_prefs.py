"""The [owner] section (node.owner_prefs): every field, every mistake, one line each."""

from __future__ import annotations

import pytest

from node.config import EXAMPLE, load_config
from node.owner_prefs import OwnerPrefs, parse_owner
from p2p.errors import ConfigError


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"cfg: {key}: {problem}", key=key)


def _uncommented_example() -> str:
    """EXAMPLE with its commented [owner] lines switched on (what an operator does)."""
    head, tail = EXAMPLE.split("# [owner]\n", 1)
    return head + "[owner]\n" + "\n".join(line[2:] for line in tail.splitlines()) + "\n"


def test_no_section_means_no_watching(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE)
    assert load_config(path).owner is None


def test_the_example_uncommented_loads_every_field(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(_uncommented_example())
    owner = load_config(path).owner
    assert owner is not None
    assert (owner.idle_s, owner.input, owner.foreign_gpu, owner.cpu_busy_pct) == (300, True, True, 0)
    assert owner.exclusive_apps == ("steam",) and owner.exclusive_gpu_apps == ("blender",)
    assert (owner.sell_on_battery, owner.gpu_max_temp_c, owner.notice_s) == (False, 0, 30)
    assert (owner.on_return, owner.max_paused_s, owner.poll_ms) == ("stop", 600, 250)
    assert owner.schedule is not None
    assert owner.schedule[5] == ((22 * 60, 9 * 60),)  # Saturday: crosses midnight
    assert owner.schedule[0] == ((0, 1440),)


def test_an_empty_section_is_all_defaults():
    assert parse_owner({}, _fail) == OwnerPrefs()
    assert OwnerPrefs().hold_s == 30 and OwnerPrefs(on_return="pause").hold_s == 600


def test_schedule_days_override_all():
    prefs = parse_owner({"schedule": {"all": ["09:00-17:30", "20:00-02:00"], "sun": []}}, _fail)
    assert prefs is not None and prefs.schedule is not None
    assert prefs.schedule[2] == ((540, 1050), (1200, 120))
    assert prefs.schedule[6] == ()


@pytest.mark.parametrize("table, key, words", [
    ([], "owner", "expected a [table]"),
    ({"idle": 3}, "owner.idle", "unknown key"),
    ({"idle_s": -1}, "owner.idle_s", "0..86400, got -1"),
    ({"idle_s": True}, "owner.idle_s", "whole number"),
    ({"cpu_busy_pct": 101}, "owner.cpu_busy_pct", "0..100"),
    ({"gpu_max_temp_c": 1.5}, "owner.gpu_max_temp_c", "whole number"),
    ({"notice_s": 3601}, "owner.notice_s", "0..3600"),
    ({"max_paused_s": 86401}, "owner.max_paused_s", "0..86400"),
    ({"poll_ms": 10}, "owner.poll_ms", "50..10000"),
    ({"input": "yes"}, "owner.input", "true or false"),
    ({"foreign_gpu": 1}, "owner.foreign_gpu", "true or false"),
    ({"sell_on_battery": "no"}, "owner.sell_on_battery", "true or false"),
    ({"exclusive_apps": "steam"}, "owner.exclusive_apps", "list of program names"),
    ({"exclusive_apps": [""]}, "owner.exclusive_apps", "list of program names"),
    ({"exclusive_gpu_apps": ["/usr/bin/blender"]}, "owner.exclusive_gpu_apps", "no path"),
    ({"on_return": "kill"}, "owner.on_return", '"pause" or "stop"'),
    ({"on_return": "pause", "notice_s": 60, "max_paused_s": 30}, "owner.max_paused_s", "at least the notice"),
    ({"schedule": "9-5"}, "owner.schedule", "[table]"),
    ({"schedule": {"monday": []}}, "owner.schedule.monday", "unknown key"),
    ({"schedule": {"mon": "09:00-17:00"}}, "owner.schedule.mon", "list of"),
    ({"schedule": {"all": ["9:00-17:00"]}}, "owner.schedule.all", "not a window"),
    ({"schedule": {"tue": ["25:00-02:00"]}}, "owner.schedule.tue", "hours run"),
    ({"schedule": {"tue": ["22:00-24:30"]}}, "owner.schedule.tue", "hours run"),
    ({"schedule": {"wed": ["08:00-08:00"]}}, "owner.schedule.wed", "is empty"),
])
def test_each_mistake_is_one_line_naming_the_key(table, key, words):
    with pytest.raises(ConfigError) as info:
        parse_owner(table, _fail)
    text = str(info.value)
    assert "\n" not in text and f"{key}:" in text and words in text, text


def test_a_mistake_in_the_file_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE + "\n[owner]\nnotice_s = -5\n")
    with pytest.raises(ConfigError, match=r"c\.toml: owner\.notice_s: expected a whole number in 0\.\.3600"):
        load_config(path)
