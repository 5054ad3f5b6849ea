"""Issue 20, the node as a service: ``suanli service install|uninstall|status`` through the real CLI, into
a temporary unit directory; each generated unit is checked by ``systemd-analyze verify`` (the real one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node.service_unit import UnitError, UnitSpec, render_unit

CLI = [sys.executable, "-m", "node.cli"]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SUANLI_HOME", "XDG_DATA_HOME", "SUANLI_BOOTSTRAP")}
    return env | {"HOME": str(tmp_path / "home"), "SUANLI_UNIT_DIR": str(tmp_path / "units")}


@pytest.fixture
def config(tmp_path, env):
    path = tmp_path / "provider.toml"
    done = _cli("provide", "--init-config", str(path), env=env | {"SUANLI_HOME": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    return path


def verify(unit: Path, *, user: bool, tmp_path: Path) -> None:
    """``systemd-analyze verify``: exit 0 and not one warning (it exits 0 on unknown keys and bad values)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("SUANLI_REQUIRE_SYSTEMD") == "1":
            pytest.fail("SUANLI_REQUIRE_SYSTEMD=1 but systemd-analyze is not installed (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    done = subprocess.run([analyze, *(["--user"] if user else []), "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, env=os.environ | {"XDG_RUNTIME_DIR": str(runtime)})
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout


@pytest.mark.parametrize("user", [False, True])
def test_install_writes_a_unit_that_verifies_then_uninstall_removes_it(tmp_path, env, config, user):
    flags = ["--user"] if user else []
    done = _cli("service", "install", *flags, "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "units" / "suanli-provide.service"
    assert f"wrote {unit}" in done.stdout and "systemctl" in done.stdout
    text = unit.read_text()
    assert "Restart=on-failure" in text and "StandardOutput=journal" in text and "KillSignal=SIGINT" in text
    assert f"--config {config}" in text and f"SUANLI_HOME={tmp_path / 'data'}" in text
    if not user:
        assert f"ReadWritePaths={tmp_path / 'data'}" in text and "ProtectSystem=strict" in text
    verify(unit, user=user, tmp_path=tmp_path)
    status = _cli("service", "status", *flags, env=env)
    assert "installed at" in status.stdout
    gone = _cli("service", "uninstall", *flags, env=env)
    assert gone.returncode == 0 and not unit.exists(), gone.stderr
    status = _cli("service", "status", *flags, env=env)
    assert status.returncode == 3 and "not installed" in status.stdout


def test_the_agent_unit_carries_its_bootstrap_and_verifies(tmp_path, env):
    done = _cli("service", "install", "--role", "agent", "--data-dir", str(tmp_path / "buyer"), "--bootstrap",
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAbc", env=env)
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "units" / "suanli-agent.service"
    text = unit.read_text()
    assert "SUANLI_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAbc" in text
    assert f"agent --data-dir {tmp_path / 'buyer'}" in text
    verify(unit, user=False, tmp_path=tmp_path)


@pytest.mark.parametrize("args, says", [
    (["service", "install"], "give --config FILE"),
    (["service", "install", "--config", "/nonexistent/provider.toml"], "no such file"),
    (["service", "install", "--role", "agent"], "--bootstrap"),
    (["service", "uninstall"], "nothing to uninstall"),
])
def test_mistakes_are_one_line_and_exit_2(env, args, says):
    done = _cli(*args, env=env)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_print_writes_nothing(tmp_path, env, config):
    done = _cli("service", "install", "--print", "--config", str(config), env=env)
    assert done.returncode == 0 and done.stdout.startswith("# Written by") and not (tmp_path / "units").exists()


@pytest.mark.parametrize("bad", ["/has space/x", "/quote\"d", "/back\\slash", "/semi;colon", "/line\nfeed"])
def test_paths_systemd_would_misread_are_refused(bad):
    with pytest.raises(UnitError):
        render_unit(UnitSpec("provide", ("/usr/bin/suanli", "provide"), Path(bad)))


def test_percent_is_escaped():
    text = render_unit(UnitSpec("agent", ("/usr/bin/suanli", "agent"), Path("/data/100%")))
    assert "ReadWritePaths=/data/100%%" in text
