"""Issue 17 item 7 end to end: with $SUANLI_HOME set, `provide --init-config` then `provide --config` starts a
provider that `suanli status` (same environment, no --data-dir) finds. Before, the generated config named
~/.local/share/suanli, the daemon ran there, and status said no provider was running."""

from __future__ import annotations

import json
import os
import subprocess

import cli_helpers as _h
import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_status_finds_the_provider_the_generated_config_started(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SUANLI_HOME", "XDG_DATA_HOME")}
    env |= {"HOME": str(tmp_path / "home"), "SUANLI_HOME": str(tmp_path / "suanli-home")}
    config = tmp_path / "provider.toml"
    done = subprocess.run([*_h.suanli(), "provide", "--init-config", str(config)], capture_output=True,
                             text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    # Loopback and a small offer, as every test provider here.
    text = config.read_text().replace('listen = ["/ip4/0.0.0.0/tcp/0"]', 'listen = ["/ip4/127.0.0.1/tcp/0"]')
    config.write_text(text.replace("memory_mib = 0 ", "memory_mib = 512 ").replace("disk_mib = 0 ", "disk_mib = 512 "))
    provider = _h.Proc("provider", [*_h.suanli(), "provide", "--config", str(config), "--json"], env=env)
    try:
        ready = provider.json_line("the provider ready", 90)
        assert ready["data_dir"] == str(tmp_path / "suanli-home")
        status = subprocess.run([*_h.suanli(), "status", "--json"], capture_output=True, text=True, timeout=30,
                                   env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["peer_id"] == ready["peer_id"]
    finally:
        provider.stop()
    assert not (tmp_path / "home" / ".local").exists()
