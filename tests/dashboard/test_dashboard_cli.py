"""``[dashboard]`` in the provider's configuration, ``suanli dashboard``, and serve_dashboard's own rules
(loopback, a taken port, the token file), with a real hypercorn server in this trio run."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import trio

from node.config import EXAMPLE, load_config
from node.dashboard.serve import TOKEN_FILE, URL_FILE, load_token, serve_dashboard
from p2p.errors import ConfigError


def test_the_example_enables_the_dashboard_on_its_port(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.dashboard_enabled is True and config.dashboard_port == 8742


@pytest.mark.parametrize("text, says", [
    ("[dashboard]\nport = 70000\n", "dashboard.port: expected a whole number in 0..65535"),
    ("[dashboard]\nport = -1\n", "dashboard.port"),
    ("[dashboard]\nenabled = 1\n", "dashboard.enabled: expected true or false"),
    ("[dashboard]\nhost = \"0.0.0.0\"\n", "dashboard.host: unknown key"),
])
def test_a_wrong_dashboard_setting_is_one_line(tmp_path, text, says):
    path = tmp_path / "p.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n' + text)
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        load_config(path)
    path.write_text(f'data_dir = "{tmp_path}"\n[dashboard]\nenabled = false\nport = 0\n')
    assert (load_config(path).dashboard_enabled, load_config(path).dashboard_port) == (False, 0)


def test_the_token_is_made_once_and_private(tmp_path):
    token = load_token(tmp_path / "d")
    assert len(token) >= 40 and load_token(tmp_path / "d") == token
    assert stat.S_IMODE((tmp_path / "d" / TOKEN_FILE).stat().st_mode) == 0o600


def _status() -> dict:
    return {"peer_id": "12D3KooWTest", "addrs": [], "accepting": True, "offer": None, "jobs": [],
            "last_errors": ["disk full"], "connected_peers": 0}


def _fetch(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_taken_port_falls_back_to_a_free_one_and_suanli_dashboard_prints_the_url(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_dashboard, tmp_path, port, _status)
            assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{port}/")
            token = (tmp_path / TOKEN_FILE).read_text().strip()
            assert json.loads((tmp_path / URL_FILE).read_text())["url"] == url
            assert stat.S_IMODE((tmp_path / URL_FILE).stat().st_mode) == 0o600
            code, body = await trio.to_thread.run_sync(lambda: _fetch(url + "api/errors",
                                                                      Authorization=f"Bearer {token}"))
            assert (code, json.loads(body)) == (200, ["disk full"])
            done = await trio.run_process([sys.executable, "-m", "node.cli", "dashboard", "--no-open", "--data-dir",
                                           str(tmp_path)], capture_stdout=True, capture_stderr=True, check=False,
                                          env={**os.environ, "DISPLAY": ""})
            assert done.returncode == 0 and done.stdout.decode().strip() == f"{url}?token={token}"
            nursery.cancel_scope.cancel()
    finally:
        taken.close()
    assert not (tmp_path / URL_FILE).exists()  # gone with the daemon


def test_suanli_dashboard_without_a_running_dashboard_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "node.cli", "dashboard", "--no-open", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no dashboard is running" in done.stderr and "Traceback" not in done.stderr
