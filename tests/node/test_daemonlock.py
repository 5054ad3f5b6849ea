"""One provider daemon per data directory and per key on a host; liveness read from the kernel's lock,
never blocking on what a Docker label names (issue 13 M6 and its review, defects 8 and 9)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from node.daemonlock import LOCK_NAME, lock_alive, take_daemon_lock, take_key_lock
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


def _alive_within(path, seconds=5.0):
    """lock_alive(path) in a thread: (finished in time, its answer). A reader stuck in open() on a FIFO is
    released afterwards by a writer, so a failing run ends too."""
    answer = []
    thread = threading.Thread(target=lambda: answer.append(lock_alive(str(path))), daemon=True)
    thread.start()
    thread.join(seconds)
    finished = not thread.is_alive()
    if not finished and stat.S_ISFIFO(os.lstat(path).st_mode):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    return finished, answer[0] if answer else None


def test_a_label_naming_a_fifo_answers_at_once_and_is_never_taken_for_dead(tmp_path):
    fifo = tmp_path / LOCK_NAME
    os.mkfifo(fifo)
    assert _alive_within(fifo) == (True, True)  # not a daemon's lock: alive, so nothing of it is reaped


@pytest.mark.parametrize("make", ["directory", "symlink"])
def test_a_label_naming_anything_but_a_regular_file_is_alive(tmp_path, make):
    target = tmp_path / "real.lock"
    target.write_text("")
    path = tmp_path / "label"
    if make == "directory":
        path.mkdir()
    else:
        path.symlink_to(target)  # never followed
    assert _alive_within(path) == (True, True)


def test_one_key_is_locked_by_one_daemon_per_host_and_the_lock_goes_with_it(tmp_path):
    first = take_key_lock("12D3KooWkey", tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"with this key \(12D3KooWkey\) is running on this host \(pid \d+\)"):
            take_key_lock("12D3KooWkey", tmp_path)
        take_key_lock("12D3KooWother", tmp_path).close()  # another key: no conflict
    finally:
        first.close()
    assert list(tmp_path.iterdir()) == []
    take_key_lock("12D3KooWkey", tmp_path).close()  # free again
