"""M6 through real processes: a second `suanli provide` with a key that is already running refuses to
start with one line and a non-zero exit, whether it shares the data dir or only the key."""

from __future__ import annotations

import pytest
from cli_helpers import Processes, run_cli, suanli

pytestmark = pytest.mark.docker


def _config(path, data_dir, key):
    path.write_text(f'data_dir = "{data_dir}"\nkey = "{key}"\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
                    "[limits]\ncpu_millis = 1000\nmemory_mib = 512\ndisk_mib = 1024\n")
    return path


def test_a_second_daemon_with_a_running_key_refuses_with_one_line(tmp_path, docker_client):
    key = tmp_path / "node.key"
    first = _config(tmp_path / "a.toml", tmp_path / "a", key)
    procs = Processes()
    try:
        proc = procs.start("provider-a", [*suanli(), "provide", "--config", str(first), "--json"])
        assert proc.json_line("provider a ready", 90)["event"] == "ready"
        for name, data_dir, needle in (("same-dir", tmp_path / "a", "already running with data dir"),
                                       ("other-dir", tmp_path / "b", "with this key")):
            done = run_cli("provide", "--config", str(_config(tmp_path / f"{name}.toml", data_dir, key)),
                           timeout_s=90)
            errors = [line for line in done.stderr.splitlines() if line.startswith("suanli: error:")]
            assert done.returncode != 0 and len(errors) == 1 and needle in errors[0], done.stderr
            assert "Traceback" not in done.stderr
        assert proc.alive()
    finally:
        procs.stop_all()
