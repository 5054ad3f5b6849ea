"""One provider daemon per data directory; liveness read from the kernel's lock (issue 13 M6)."""

from __future__ import annotations

import pytest

from node.daemonlock import LOCK_NAME, lock_alive, take_daemon_lock
from p2p.errors import ConfigError


def test_a_second_lock_on_one_data_dir_is_one_line_and_the_first_is_alive(tmp_path):
    first = take_daemon_lock(tmp_path)
    try:
        assert lock_alive(first.label)
        with pytest.raises(ConfigError, match=r"already running with data dir .*\(pid \d+\)|pid \d+"):
            take_daemon_lock(tmp_path)
        assert first.marker_volume().startswith("suanli-daemon-") and len(first.marker_volume()) == 30
    finally:
        first.close()
    assert not lock_alive(first.label)  # released: the daemon is gone, its objects may be reaped
    again = take_daemon_lock(tmp_path)
    again.close()


def test_a_missing_lock_file_is_a_dead_daemon(tmp_path):
    assert not lock_alive(str(tmp_path / "nowhere" / LOCK_NAME))
