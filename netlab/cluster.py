"""A cluster of real ``suanli`` processes, each in a network namespace of its own (issue 21).

``Cluster`` owns a ``netns.Lab`` and every process and container its nodes make:

- **bootstrap hosts** (``add_bootstrap``): ``suanli bootstrap`` on 198.18.0.n:4001, each joined to the
  ones before it;
- **providers** (``add_provider``): ``suanli provide`` with a CPU-only config of their own (data dir,
  key, ``listen`` on their address, every bootstrap host), within this machine's cores and memory;
- **agents** (``add_agent``): ``suanli agent`` (the resident buyer), and ``run_job`` starts ``suanli run``
  through it inside the agent's namespace;
- **watchers** (``add_watcher``): ``netlab.cluster_watch``, a buyer-side node that reports offer arrivals
  and answers find / collect queries (the harness's eyes on the market).

Faults: ``partition(a, b)`` / ``heal()`` (the lab's iptables DROP between groups), ``kill(node)``
(SIGKILL to the node's process group: a crash) and ``restart(node)`` (same data dir, key and port),
``remove(node)`` and adding nodes again for churn.

Rule 1: everything is bounded in time: every start waits at most ``START_TIMEOUT_S`` for the node's
ready line, every job at most its ``--max-duration`` plus a margin.
Rule 2: ``close()`` (also on an exception in the ``with``) stops every process, then removes every
container and volume a provider of this cluster made (they carry the daemon's lock file path, under
this cluster's root, in the ``suanli.owner`` label: sandbox.spec ``LABEL_OWNER``), then the lab.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab import netns
from netlab.cluster_proc import Proc, ProcError
from sandbox.spec import LABEL_OWNER

START_TIMEOUT_S = 90.0
BOOT_PORT, PROVIDER_PORT = 4001, 4002

PROVIDER_TOML = """\
data_dir = "{data_dir}"
listen = ["/ip4/{ip}/tcp/{port}"]
bootstrap = [{bootstrap}]

[prices]
cpu_core_micros_per_s = {cpu_price}
memory_gib_micros_per_s = 10

[limits]
max_duration_s = 600
max_concurrent_jobs = {max_jobs}
cpu_millis = {cpu_millis}
memory_mib = {memory_mib}

[receipts]
interval_ms = 1000
countersign_timeout_ms = 2000
grace_ms = 2000
exposure_cap_micros = {exposure_cap_micros}
"""


class ClusterError(RuntimeError):
    """The harness could not build or drive the cluster (a node did not start, a command failed)."""


def suanli() -> list[str]:
    return [sys.executable, "-m", "node.cli"]


@dataclass
class Node:
    name: str
    role: str  # bootstrap | provider | agent | watcher
    host: netns.Host
    home: Path
    argv: list[str]
    proc: Proc | None = None
    addr: str = ""  # bootstrap: its multiaddr; provider: its peer id
    peer_id: str = ""
    starts: int = 0
    kills: list[float] = field(default_factory=list)  # wall seconds of each kill -9

    @property
    def db(self) -> Path:
        return self.home / ("node.db" if self.role == "provider" else "buyer.db")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


class Cluster:
    def __init__(self, root: Path, *, image: str = "", cpu_price: int = 40, exposure_cap_micros: int = 100) -> None:
        self.root = root
        self.image = image
        self.cpu_price = cpu_price
        self.exposure_cap_micros = exposure_cap_micros
        self.lab = netns.Lab()
        self.nodes: dict[str, Node] = {}
        self.jobs: list[Proc] = []
        self._others: list[Proc] = []

    # --- life ---------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.lab.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Rule 2: every process, then every container and volume of this cluster's providers, then the lab."""
        try:
            for proc in [*self.jobs, *self._others]:
                proc.kill()
            for node in self.nodes.values():
                if node.proc is not None:
                    node.proc.stop(timeout_s=5)
        finally:
            try:
                reap_containers(self.root)
            finally:
                self.lab.close()

    # --- nodes --------------------------------------------------------------------------------

    @property
    def bootstraps(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "bootstrap"]

    def of_role(self, role: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == role]

    def boot_addrs(self, alive_only: bool = False) -> list[str]:
        return [n.addr for n in self.bootstraps if n.addr and (n.alive() or not alive_only)]

    def _new(self, name: str, role: str) -> tuple[netns.Host, Path]:
        if name in self.nodes:
            raise ClusterError(f"a node named {name} exists already")
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        return self.lab.public_host(name), home

    def add_bootstrap(self, name: str) -> Node:
        host, home = self._new(name, "bootstrap")
        key = home / "bootstrap.key"
        done = subprocess.run([*suanli(), "keys", "new", "--out", str(key)], capture_output=True, text=True,
                              timeout=60)
        if done.returncode != 0:
            raise ClusterError(f"suanli keys new: {done.stderr.strip()}")
        peers = [arg for a in self.boot_addrs(alive_only=True) for arg in ("--peer", a)]
        argv = [*suanli(), "bootstrap", "--key", str(key), "--listen", f"/ip4/{host.ip}/tcp/{BOOT_PORT}", "--json",
                *peers]
        node = self.nodes[name] = Node(name, "bootstrap", host, home, argv)
        ready = self._start(node)
        node.addr = str(ready["addrs"][0])
        node.peer_id = node.addr.rsplit("/", 1)[-1]
        return node

    def add_provider(self, name: str, *, cpu_millis: int = 1000, memory_mib: int = 512, max_jobs: int = 2,
                     cpu_price: int | None = None) -> Node:
        host, home = self._new(name, "provider")
        config = home / "provider.toml"
        config.write_text(PROVIDER_TOML.format(
            data_dir=home, ip=host.ip, port=PROVIDER_PORT, bootstrap=", ".join(f'"{a}"' for a in self.boot_addrs()),
            cpu_price=self.cpu_price if cpu_price is None else cpu_price, max_jobs=max_jobs, cpu_millis=cpu_millis,
            memory_mib=memory_mib, exposure_cap_micros=self.exposure_cap_micros))
        node = self.nodes[name] = Node(name, "provider", host, home,
                                       [*suanli(), "provide", "--config", str(config), "--json"])
        ready = self._start(node)
        node.peer_id = node.addr = str(ready.get("peer_id", ""))
        return node

    def add_agent(self, name: str) -> Node:
        host, home = self._new(name, "agent")
        boots = [arg for a in self.boot_addrs(alive_only=True) for arg in ("--bootstrap", a)]
        node = self.nodes[name] = Node(name, "agent", host, home,
                                       [*suanli(), "agent", "--data-dir", str(home), "--json", *boots])
        ready = self._start(node)
        node.peer_id = str(ready.get("peer_id", ""))
        return node

    def add_watcher(self, name: str) -> Node:
        host, home = self._new(name, "watcher")
        boots = [arg for a in self.boot_addrs(alive_only=True) for arg in ("--bootstrap", a)]
        node = self.nodes[name] = Node(name, "watcher", host, home,
                                       [sys.executable, "-m", "netlab.cluster_watch", *boots])
        ready = self._start(node)
        node.peer_id = str(ready.get("peer_id", ""))
        return node

    def _start(self, node: Node) -> dict[str, Any]:
        node.starts += 1
        env = {**os.environ, "SUANLI_HOME": str(node.home), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        node.proc = Proc(f"{node.name}#{node.starts}", ["ip", "netns", "exec", node.host.ns, *node.argv], env=env,
                         stdin=node.role == "watcher")
        try:
            return node.proc.json_event(f"{node.name} ready", lambda d: d.get("event") == "ready" or "addrs" in d,
                                        START_TIMEOUT_S)
        except ProcError as exc:
            raise ClusterError(str(exc)) from None

    # --- faults -------------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """kill -9 of the node's process group, as a crash (or a pulled plug) would."""
        if node.proc is not None:
            node.kills.append(time.time())
            node.proc.kill()

    def restart(self, node: Node) -> dict[str, Any]:
        """Start the node again: same namespace, data dir, key and port."""
        if node.alive():
            raise ClusterError(f"{node.name} is still running")
        return self._start(node)

    def remove(self, node: Node) -> None:
        """A node leaves for good (SIGTERM, then SIGKILL). Its record stays, so that its database is still
        audited; its namespace stays until the lab closes."""
        if node.proc is not None:
            node.proc.stop(timeout_s=5)

    def partition(self, side_a: list[Node], side_b: list[Node]) -> None:
        self.lab.cut([n.host for n in side_a], [n.host for n in side_b])

    def heal(self) -> None:
        self.lab.heal()

    # --- work ---------------------------------------------------------------------------------

    def run_job(self, agent: Node, seconds: float, *, cpus: str = "0.5", memory: str = "64m",
                max_duration_s: int = 120) -> Proc:
        """``suanli run`` through ``agent`` (inside its namespace): a job that sleeps ``seconds``, then says ok."""
        if not self.image:
            raise ClusterError("this cluster was built without an image: jobs need one")
        argv = ["ip", "netns", "exec", agent.host.ns, *suanli(), "run", "--data-dir", str(agent.home),
                "--image", self.image, "--cpus", cpus, "--memory", memory, "--max-price", "100", "--max-duration",
                str(max_duration_s), "--json", "--", "sh", "-c", f"sleep {seconds:g}; echo ok"]
        proc = Proc(f"job{len(self.jobs) + 1}@{agent.name}", argv)
        self.jobs.append(proc)
        return proc

    def watcher_command(self, watcher: Node, doc: dict[str, Any], event: str, timeout_s: float) -> dict[str, Any]:
        if watcher.proc is None:
            raise ClusterError(f"{watcher.name} is not running")
        mark = watcher.proc.send_line(doc)
        return watcher.proc.json_event(f"{watcher.name}: {event}", lambda d: d.get("event") == event, timeout_s,
                                       after=mark)

    def status(self, provider: Node) -> dict[str, Any] | None:
        """``suanli status --json`` of a provider (None while it is down or does not answer)."""
        try:
            done = subprocess.run([*suanli(), "status", "--json", "--data-dir", str(provider.home)],
                                  capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        import json

        try:
            doc: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            return None
        return doc


def reap_containers(root: Path) -> list[str]:
    """Remove (forced) every container and volume whose ``suanli.owner`` lock file lies under ``root``."""
    removed: list[str] = []
    prefix = str(root)
    for kind, listing, remove in (("container", ["docker", "ps", "-a", "--format", '{{.ID}} {{.Label "%s"}}'],
                                   ["docker", "rm", "-f", "-v"]),
                                  ("volume", ["docker", "volume", "ls", "--format", '{{.Name}} {{.Label "%s"}}'],
                                   ["docker", "volume", "rm", "-f"])):
        listing = [*listing[:-1], listing[-1] % LABEL_OWNER]
        try:
            out = subprocess.run(listing, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        ids = [line.split(" ", 1)[0] for line in out.splitlines()
               if " " in line and line.split(" ", 1)[1].startswith(prefix)]
        if ids:
            try:
                subprocess.run([*remove, *ids], capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                pass
            removed += [f"{kind} {i}" for i in ids]
    return removed
