"""Issue 17 items 8 and 9 through the real CLI: a listen address that cannot work, a port another process
holds, and a provider offering more than its machine has are each one line on stderr and exit 2, before
anything starts; never a traceback, never a node that says "ready" and listens nowhere, never two
processes on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.config import EXAMPLE
from node.provider import machine_cpu_millis, machine_memory_mib


def _suanli(*args: str, home: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "SUANLI_HOME": str(home / "data")}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env)


def _one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "" and all(n in done.stderr for n in needles), done.stderr


@pytest.fixture(scope="module")
def boot_key(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("listen")
    key = root / "b.key"
    done = _suanli("keys", "new", "--out", str(key), home=root)
    assert done.returncode == 0, done.stderr
    return key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("addr, says", [
    ("garbage", "is not of the form /ip4/ADDRESS/tcp/PORT"),
    ("/ip4/127.0.0.1/udp/4001", "is not of the form"),  # before: "ready", listening nowhere
    ("/dns4/localhost/tcp/0", "is not of the form"),  # before: listened on every interface
    ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAf3zegcyeXnbEuNvWudzXM5TNbjmDdzgcAdr8Pty1xH2", "is not of the form"),
    ("/ip4/127.0.0.1/tcp/99999", "the port must be a number in 0..65535"),
    ("/ip4/127.0.0.1/tcp/-1", "the port must be a number in 0..65535"),
    ("/ip4/300.0.0.1/tcp/1", "is not an IP4 address"),
    ("/ip6/127.0.0.1/tcp/1", "is not an IP6 address"),
    ("/ip4/192.0.2.1/tcp/0", "cannot listen on /ip4/192.0.2.1/tcp/0: "),  # TEST-NET-1: not this machine's
])
def test_bootstrap_listen_that_cannot_work_is_one_line(tmp_path, boot_key, addr, says):
    _one_line(_suanli("bootstrap", "--key", str(boot_key), "--listen", addr, "--json", home=tmp_path, timeout_s=30),
              says, addr)


def test_a_second_process_cannot_take_our_port(tmp_path, boot_key):
    """Before: py-libp2p set SO_REUSEPORT, both bootstraps said they listened on the port, and the kernel
    split incoming connections between them."""
    port = _free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    env = {**os.environ, "HOME": str(tmp_path), "SUANLI_HOME": str(tmp_path / "data")}
    first = subprocess.Popen([sys.executable, "-m", "node.cli", "bootstrap", "--key", str(boot_key), "--listen", addr,
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                             start_new_session=True)
    try:
        ready = json.loads(first.stdout.readline())  # bounded by the module's timeout below
        assert ready["event"] == "ready" and ready["addrs"][0].startswith(addr + "/p2p/")
        second = _suanli("bootstrap", "--key", str(boot_key), "--listen", addr, home=tmp_path, timeout_s=30)
        _one_line(second, f"cannot listen on {addr}: ", "another process listens there")
        with socket.socket() as other:  # nor may any other program, even one that asks for port sharing
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        assert first.poll() is None
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=30)


def test_a_wrong_bootstrap_peer_id_is_named_at_once(tmp_path, boot_key):
    """Issue 17 item 11: before, ~10 s of back-off, then "no bootstrap peer answered"."""
    port = _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "SUANLI_HOME": str(tmp_path / "data")}
    boot = subprocess.Popen([sys.executable, "-m", "node.cli", "bootstrap", "--key", str(boot_key), "--listen",
                             f"/ip4/127.0.0.1/tcp/{port}", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    try:
        real = json.loads(boot.stdout.readline())["peer_id"]
        other = _suanli("keys", "new", "--out", str(tmp_path / "other.key"), "--json", home=tmp_path)
        wrong = json.loads(other.stdout)["peer_id"]
        t0 = time.monotonic()
        done = _suanli("offers", "--local", "--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{wrong}", home=tmp_path)
        _one_line(done, f"answered as peer {real}, not {wrong}", "correct the peer id after /p2p/")
        assert time.monotonic() - t0 < 8
    finally:
        os.killpg(boot.pid, signal.SIGTERM)
        boot.wait(timeout=30)


def _provider_config(tmp_path: Path, **edits: str) -> Path:
    doc = EXAMPLE.replace('data_dir = "~/.local/share/suanli"', f'data_dir = "{tmp_path / "pdata"}"')
    for old, new in edits.items():
        assert old in doc
        doc = doc.replace(old, new, 1)
    path = tmp_path / "provider.toml"
    path.write_text(doc)
    return path


@pytest.mark.parametrize("listen, says", [
    ("/ip4/127.0.0.1/udp/1", "listen: listen address '/ip4/127.0.0.1/udp/1' is not of the form"),
    ("/dns4/example.com/tcp/1", "listen: listen address '/dns4/example.com/tcp/1' is not of the form"),
    ("/ip4/192.0.2.1/tcp/0", "cannot listen on /ip4/192.0.2.1/tcp/0: "),
])
def test_provide_listen_that_cannot_work_is_one_line(tmp_path, listen, says):
    path = _provider_config(tmp_path, **{'listen = ["/ip4/0.0.0.0/tcp/0"]': f'listen = ["{listen}"]'})
    _one_line(_suanli("provide", "--config", str(path), home=tmp_path), says)
    assert not (tmp_path / "pdata").exists()  # no key, no directory


def test_provider_offering_more_memory_than_the_machine_has_is_refused(tmp_path):
    """Issue 17 item 9: before, 99,999,999 MiB on a 24 GiB machine was offered without a word."""
    path = _provider_config(tmp_path, **{"memory_mib = 0 ": "memory_mib = 16777216 "})
    t0 = time.monotonic()
    _one_line(_suanli("provide", "--config", str(path), home=tmp_path), "limits.memory_mib: 16777216 MiB is more "
              f"than this machine's memory ({machine_memory_mib()} MiB)")
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "pdata").exists()  # no key, no directory


def test_provider_offering_more_cores_than_the_machine_has_is_refused(tmp_path):
    too_many = machine_cpu_millis() + 1000
    path = _provider_config(tmp_path, **{"cpu_millis = 0 ": f"cpu_millis = {too_many} "})
    _one_line(_suanli("provide", "--config", str(path), home=tmp_path),
              f"limits.cpu_millis: {too_many} is more than this machine's {machine_cpu_millis() // 1000} core(s)")
