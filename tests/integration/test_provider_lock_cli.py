"""M6 through real processes: a second `suanli provide` with a key that is already running refuses to
start with one line and a non-zero exit, whether it shares the data dir or only the key. And a
provider that is not root (it could never make a job's disk) refuses to start with one line, exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to drop to another user, and setpriv")
def test_a_provider_that_is_not_root_refuses_to_start_with_one_line():
    """Review of issue 13, defect 7: it used to advertise disk, take agreements, then fail every job."""
    home = Path(tempfile.mkdtemp(prefix="suanli-nobody-"))  # under /tmp: pytest's own base is root-only
    try:
        config = _config(home / "p.toml", home / "data", home / "node.key")
        for path in (home, config):
            os.chown(path, NOBODY, NOBODY)
        done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *suanli(),
                               "provide", "--config", str(config)], capture_output=True, text=True, timeout=60)
        errors = [line for line in done.stderr.splitlines() if line.startswith("suanli: error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr
        assert "must run as root" in errors[0] and "docs/SANDBOX.md" in errors[0]
        assert "Traceback" not in done.stderr and not (home / "data").exists()
    finally:
        shutil.rmtree(home)
