"""The network lab builds real namespaces, NATs and partitions, and leaves nothing behind.

These are the ground the reachability and cluster tests stand on, so each property they rely on is
checked here with plain sockets: who can reach whom, which address a server sees, that a TCP hole
punch passes a cone NAT and not a symmetric one, and that teardown removes every namespace, link and
process, even after a failure inside the lab.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netlab import netns

PORT = 9000

SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {PORT}))
s.listen()
print("ready", flush=True)
for _ in range(20):
    c, addr = s.accept()
    print(addr[0], flush=True)
    c.close()
"""

PUNCH = """
import socket, sys, time
peer, port = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", 7000))
    s.settimeout(1.5)
    try:
        s.connect((peer, port))
        s.sendall(b"hi")
        print("connected", s.recv(2).decode(), flush=True)
        sys.exit(0)
    except OSError:
        s.close()
        time.sleep(0.05)
print("failed", flush=True)
sys.exit(1)
"""


@pytest.fixture(scope="module", autouse=True)
def _namespaces_work():
    reason = netns.available()
    if reason is not None:
        if os.environ.get("SUANLI_REQUIRE_NETNS") == "1":
            pytest.fail(f"SUANLI_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def _serve(host: netns.Host) -> subprocess.Popen[bytes]:
    proc = host.popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def _reaches(host: netns.Host, ip: str) -> bool:
    probe = f"import socket; socket.create_connection(({ip!r}, {PORT}), timeout=1).close()"
    return subprocess.run(["ip", "netns", "exec", host.ns, sys.executable, "-c", probe],
                          capture_output=True, timeout=10).returncode == 0


def _seen(server: subprocess.Popen[bytes]) -> str:
    assert server.stdout is not None
    return server.stdout.readline().decode().strip()


def _leftovers() -> tuple[list[str], str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    ours = [line for line in links.splitlines() if f"sli{os.getpid() % 10**5}v" in line
            or f"slo{os.getpid() % 10**5}v" in line]
    mine = [ns for ns in netns.lab_namespaces() if ns.startswith(f"{netns.PREFIX}{os.getpid()}x")]
    return mine, "\n".join(ours)  # only this process's: other labs may be running beside this test


def test_public_hosts_reach_each_other_and_homes_reach_out_through_nat():
    with netns.Lab() as lab:
        a, b = lab.public_host("a"), lab.public_host("b")
        home = lab.home("home")
        inside = lab.host_in(home, "pc")
        server_a, _ = _serve(a), _serve(b)
        server_pc = _serve(inside)

        assert _reaches(b, a.ip)
        assert _seen(server_a) == b.ip
        assert _reaches(inside, a.ip)
        assert _seen(server_a) == home.router.ip == inside.public_ip  # the server sees the NAT's address
        assert inside.ip.startswith("10.")
        # Nothing from outside reaches the LAN, neither the private address nor the router's.
        assert not _reaches(a, inside.ip)
        assert not _reaches(a, home.router.ip)
        assert server_pc.poll() is None


def test_a_home_behind_carrier_grade_nat_is_behind_two_nats():
    with netns.Lab() as lab:
        server = lab.public_host("server")
        isp = lab.carrier("isp")
        home = lab.home("home", isp=isp)
        pc = lab.host_in(home, "pc")
        seen = _serve(server)

        assert home.router.ip.startswith("100.64.")
        assert _reaches(pc, server.ip)
        assert _seen(seen) == isp.router.ip == pc.public_ip


def test_a_cut_drops_both_ways_until_healed_and_spares_everyone_else():
    with netns.Lab() as lab:
        a, b, c = lab.public_host("a"), lab.public_host("b"), lab.public_host("c")
        for host in (a, b, c):
            _serve(host)
        lab.cut([a], [b, c])
        assert not _reaches(a, b.ip) and not _reaches(b, a.ip) and not _reaches(c, a.ip)
        assert _reaches(b, c.ip)
        lab.heal()
        assert _reaches(a, b.ip) and _reaches(c, a.ip)


@pytest.mark.parametrize(("nat", "punches"), [("cone", True), ("symmetric", False)])
def test_a_tcp_hole_punch_passes_cone_nats_and_not_symmetric_ones(nat, punches):
    """Simultaneous open from both sides, each to the other's public address and port: what DCUtR
    does. A cone NAT keeps the port, so both SYNs meet; a symmetric one picks a new random port."""
    with netns.Lab() as lab:
        left, right = lab.home("left", nat=nat), lab.home("right", nat=nat)
        x, y = lab.host_in(left, "x"), lab.host_in(right, "y")
        px = x.popen([sys.executable, "-c", PUNCH, right.public_ip, "7000"], stdout=subprocess.PIPE)
        py = y.popen([sys.executable, "-c", PUNCH, left.public_ip, "7000"], stdout=subprocess.PIPE)
        out = px.communicate(timeout=30)[0] + py.communicate(timeout=30)[0]
        assert (out.count(b"connected hi") == 2) is punches, out


def test_teardown_removes_namespaces_links_and_processes_even_after_a_failure():
    started = None
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Lab() as lab:
            lab.host_in(lab.home("home"), "pc")
            started = lab.public_host("a").popen(["sleep", "300"])
            raise RuntimeError("boom")
    assert started is not None and started.wait(timeout=5) != 0
    assert _leftovers() == ([], "")


def test_sweep_removes_the_namespaces_of_a_lab_whose_process_died():
    dead = subprocess.run(["true"], check=True)  # noqa: F841 (a pid that has surely exited)
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=5)
    orphan = f"{netns.PREFIX}{proc.pid}x1wan"
    subprocess.run(["ip", "netns", "add", orphan], check=True, timeout=10)
    try:
        assert orphan in netns.sweep()
        assert orphan not in netns.lab_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", orphan], capture_output=True, timeout=10)


def test_an_unknown_nat_kind_is_refused_and_nothing_is_left():
    with netns.Lab() as lab, pytest.raises(ValueError, match="nat must be one of"):
        lab.home("home", nat="full-cone")
    assert _leftovers() == ([], "")
