"""Hosts with their own network stacks on one machine: Linux network namespaces, veth pairs, NAT.

A ``Lab`` builds a small internet inside namespaces it owns, and tears every piece down on exit,
even when the code inside the ``with`` failed:

- the **backbone**: a bridge in a namespace of its own, on 198.18.0.0/15 (RFC 2544's benchmarking
  range, never routed on the real internet). The machine's own namespace is never touched.
- **public hosts**: one namespace each, one address on the backbone.
- **homes**: a router namespace with a backbone address and a LAN 10.<n>.0.0/24 behind NAT
  (iptables MASQUERADE). ``nat="cone"`` keeps the mapping of a socket for every destination, as
  most home routers do, so hole punching can work; ``nat="symmetric"`` gives each destination a
  new random port (``--random-fully``), against which hole punching fails, as it does behind many
  carrier and corporate NATs.
- **carrier-grade NAT**: ``lab.carrier()`` is an ISP router with a backbone address and a shared
  100.64.<n>.0/24 (RFC 6598) behind NAT; homes built with ``isp=`` sit behind it, so their hosts are
  behind two NATs.
- **partitions**: ``cut(a, b)`` drops every packet between two groups of hosts (iptables DROP in
  their own namespaces); ``heal()`` removes every cut.
- **processes**: ``host.popen(argv)`` runs a program inside a host's namespace (``ip netns exec``);
  the lab kills whatever still runs in its namespaces before deleting them.

Namespaces are named ``slab<pid>x<n>...``: ``sweep()`` deletes those of processes that are no longer
alive, so a test killed half-way leaves nothing behind for the next run. Needs root (CAP_NET_ADMIN)
and the ``ip`` and ``iptables`` commands; ``available()`` says whether this machine has them.

Every command has a time limit; nothing here loops without a bound.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

BACKBONE = ipaddress.ip_network("198.18.0.0/15")
CARRIER_LAN = "100.64.{n}.0/24"  # RFC 6598 shared address space, used inside carrier-grade NATs
HOME_LAN = "10.{n}.0.0/24"
PREFIX = "slab"
COMMAND_TIMEOUT_S = 20.0
NAT_KINDS = ("cone", "symmetric")


class LabError(RuntimeError):
    """A namespace command failed: the message holds the command and its stderr."""


def available() -> str | None:
    """None when this machine can build labs; otherwise the reason it cannot, in one line."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the {tool} command is missing"
    probe = f"{PREFIX}probe{os.getpid()}"
    try:
        _sh(["ip", "netns", "add", probe])
    except LabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _sh(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"])
    except LabError as exc:
        return f"iptables NAT does not work in a namespace: {exc}"
    finally:
        _sh(["ip", "netns", "del", probe], check=False)
    return None


def _sh(argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout:g} s") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lab_namespaces() -> list[str]:
    """Every namespace on this machine whose name says a lab made it."""
    out = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def sweep() -> list[str]:
    """Delete the namespaces of labs whose process has died; returns their names."""
    removed = []
    for name in lab_namespaces():
        owner = name[len(PREFIX):].split("x", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _kill_inside(name)
            _sh(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


def _kill_inside(ns: str) -> None:
    out = _sh(["ip", "netns", "pids", ns], check=False)
    for word in out.split():
        if word.isdigit():
            try:
                os.kill(int(word), signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Host:
    """One network stack: a namespace with one address (``ip``) and a default route."""

    lab: Lab
    name: str
    ns: str
    ip: str
    home: Home | None = None

    @property
    def public_ip(self) -> str:
        """The address the backbone sees this host's packets come from (its outermost NAT's)."""
        return self.home.public_ip if self.home is not None else self.ip

    def sh(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> str:
        """Run a short command inside this host's namespace and return its stdout."""
        return _sh(["ip", "netns", "exec", self.ns, *argv], check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a program inside this host's namespace; the lab kills it at teardown."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.ns, *argv], **kwargs)
        self.lab._procs.append(proc)
        return proc


@dataclass
class Home:
    """A router with one backbone-side address and a LAN behind NAT."""

    name: str
    router: Host
    lan: ipaddress.IPv4Network
    nat: str
    isp: Home | None = None
    hosts: list[Host] = field(default_factory=list)

    @property
    def public_ip(self) -> str:
        return self.isp.public_ip if self.isp is not None else self.router.ip


class Lab:
    """A private internet of namespaces; a context manager that always tears it down."""

    def __init__(self) -> None:
        self.id = f"{PREFIX}{os.getpid()}x{time.monotonic_ns() % 10**6}"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._links = 0
        self._next_backbone = 10
        self._next_lan = 1
        self._cuts: list[tuple[Host, list[str]]] = []
        self.backbone_ns = ""
        self.hosts: dict[str, Host] = {}

    # --- life ---------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        sweep()
        try:
            self.backbone_ns = self._namespace("wan")
            self._in(self.backbone_ns, "ip", "link", "add", "br0", "type", "bridge")
            self._in(self.backbone_ns, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process started in the lab, then delete its namespaces (veths go with them)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self._namespaces):
            _kill_inside(ns)
            _sh(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    # --- building -----------------------------------------------------------------------------

    def public_host(self, name: str) -> Host:
        """A host with its own address on the backbone: a server, a bootstrap host, a relay."""
        ns = self._namespace(name)
        ip = self._backbone_address()
        self._to_backbone(ns, ip)
        host = Host(self, name, ns, ip)
        self.hosts[name] = host
        return host

    def carrier(self, name: str, *, nat: str = "cone") -> Home:
        """An ISP's carrier-grade NAT: homes built with ``isp=`` it get 100.64.n.x addresses."""
        return self._router(name, nat=nat, lan=self._lan(CARRIER_LAN), isp=None)

    def home(self, name: str, *, nat: str = "cone", isp: Home | None = None) -> Home:
        """A home router with a 10.n.0.0/24 LAN behind NAT, on the backbone or behind ``isp``."""
        return self._router(name, nat=nat, lan=self._lan(HOME_LAN), isp=isp)

    def host_in(self, home: Home, name: str) -> Host:
        """A machine on a home's LAN: reaches the backbone through the home's NAT (and its ISP's)."""
        ns = self._namespace(name)
        ip = str(home.lan.network_address + 10 + len(home.hosts))
        self._link(ns, home.router.ns, f"{ip}/{home.lan.prefixlen}", gateway=str(home.lan.network_address + 1),
                   peer_side="lan")
        host = Host(self, name, ns, ip, home=home)
        home.hosts.append(host)
        self.hosts[name] = host
        return host

    # --- faults -------------------------------------------------------------------------------

    def cut(self, side_a: Iterable[Host], side_b: Iterable[Host]) -> None:
        """Drop every packet between the two groups, both ways, until ``heal``."""
        a, b = list(side_a), list(side_b)
        for one, others in ((a, b), (b, a)):
            for host in one:
                addrs = sorted({o.public_ip for o in others} | {o.ip for o in others})
                for addr in addrs:
                    host.sh("iptables", "-I", "INPUT", "-s", addr, "-j", "DROP")
                    host.sh("iptables", "-I", "OUTPUT", "-d", addr, "-j", "DROP")
                self._cuts.append((host, addrs))

    def heal(self) -> None:
        """Remove every cut."""
        for host, addrs in self._cuts:
            for addr in addrs:
                host.sh("iptables", "-D", "INPUT", "-s", addr, "-j", "DROP", check=False)
                host.sh("iptables", "-D", "OUTPUT", "-d", addr, "-j", "DROP", check=False)
        self._cuts.clear()

    # --- pieces -------------------------------------------------------------------------------

    def _router(self, name: str, *, nat: str, lan: ipaddress.IPv4Network, isp: Home | None) -> Home:
        if nat not in NAT_KINDS:
            raise ValueError(f"nat must be one of {', '.join(NAT_KINDS)}, not {nat!r}")
        ns = self._namespace(name)
        if isp is None:
            outside = self._backbone_address()
            self._to_backbone(ns, outside)
        else:
            outside = str(isp.lan.network_address + 10 + len(isp.hosts))
            self._link(ns, isp.router.ns, f"{outside}/{isp.lan.prefixlen}",
                       gateway=str(isp.lan.network_address + 1), peer_side="lan")
        self._in(ns, "ip", "link", "add", "lan", "type", "bridge")
        self._in(ns, "ip", "addr", "add", f"{lan.network_address + 1}/{lan.prefixlen}", "dev", "lan")
        self._in(ns, "ip", "link", "set", "lan", "up")
        self._in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", str(lan), "-o", "eth0", "-j", "MASQUERADE"]
        if nat == "symmetric":
            masquerade.append("--random-fully")
        self._in(ns, *masquerade)
        # A home router forwards only what its LAN started: nothing from outside reaches the LAN
        # unless conntrack has seen the flow (or a hole-punch made one).
        self._in(ns, "iptables", "-A", "FORWARD", "-i", "eth0", "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self._in(ns, "iptables", "-A", "FORWARD", "-i", "eth0", "-j", "DROP")
        # And the router itself answers nothing new from outside: an unsolicited SYN is dropped, not
        # refused with a RST (which would end the peer's half of a simultaneous open early), as home
        # routers and carrier NATs do.
        self._in(ns, "iptables", "-A", "INPUT", "-i", "eth0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
        router = Host(self, name, ns, outside)
        home = Home(name, router, lan, nat, isp)
        if isp is not None:
            isp.hosts.append(router)
        self.hosts[name] = router
        return home

    def _namespace(self, role: str) -> str:
        ns = f"{self.id}{role}"
        _sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._in(ns, "ip", "link", "set", "lo", "up")
        return ns

    def _in(self, ns: str, *argv: str) -> str:
        return _sh(["ip", "netns", "exec", ns, *argv])

    def _backbone_address(self) -> str:
        n = self._next_backbone
        self._next_backbone += 1
        return str(BACKBONE.network_address + n)

    def _lan(self, pattern: str) -> ipaddress.IPv4Network:
        n = self._next_lan
        self._next_lan += 1
        return ipaddress.IPv4Network(pattern.format(n=n))

    def _to_backbone(self, ns: str, ip: str) -> None:
        self._link(ns, self.backbone_ns, f"{ip}/{BACKBONE.prefixlen}", gateway=None, peer_side="br0")

    def _link(self, ns: str, peer_ns: str, cidr: str, *, gateway: str | None, peer_side: str) -> None:
        """A veth pair: ``eth0`` in ``ns`` with ``cidr``; the other end joins bridge ``peer_side``."""
        self._links += 1
        inner, outer = f"sli{os.getpid() % 10**5}v{self._links}", f"slo{os.getpid() % 10**5}v{self._links}"
        _sh(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
        _sh(["ip", "link", "set", inner, "netns", ns])
        _sh(["ip", "link", "set", outer, "netns", peer_ns])
        self._in(ns, "ip", "link", "set", inner, "name", "eth0")
        self._in(ns, "ip", "addr", "add", cidr, "dev", "eth0")
        self._in(ns, "ip", "link", "set", "eth0", "up")
        self._in(peer_ns, "ip", "link", "set", outer, "master", peer_side)
        self._in(peer_ns, "ip", "link", "set", outer, "up")
        if gateway is not None:
            self._in(ns, "ip", "route", "add", "default", "via", gateway)
