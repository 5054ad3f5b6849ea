"""The resident buyer agent (``suanli agent``): the buyer's node, joined once, serving ``suanli run``.

A standalone ``suanli run`` pays for a Python process that imports py-libp2p (about half a second),
joins the overlay and collects offers before it can propose anything. The agent does that once, as
dockerd does for the docker CLI: it stays joined, keeps the live offers (gossip, plus a DHT query at
start and every ``REFRESH_S``), and keeps the buyer's key and database open. ``suanli run`` finds its
socket in the data directory and hands the job over (node.agent_client, which documents the
protocol); the job then runs exactly as a standalone run would (node.buyer.buy), with the
same key, the same ``buyer.db``, the same checks and countersignatures.

Rule 1: the socket is the owner's only (0600), and one agent serves one data directory.
Rule 2: every request is checked field by field before anything runs; a bad one gets an error event
and its connection closes, never the agent.
Rule 3: a client that leaves (Ctrl-C twice, killed) cancels its job: the provider stops it and both
sides record the final receipt, exactly as for a cancel.
Rule 4: on SIGINT/SIGTERM the agent cancels every running job, waits (bounded) for their final
receipts, then leaves the overlay.
Rule 5: a provider that could not be reached, stayed silent or broke off during a negotiation has its
offer set aside (p2p.gossip Rule 4) until it publishes a newer one: later runs do not wait on a
provider that has gone, for as long as its last offer would have lived. Only the offer the run was given
is set aside: a newer one that came meanwhile (a provider restarted on a new port) is tried next.
Rule 6: the agent serves the buyer's side of the dashboard (docs/DASHBOARD.md, node.dashboard.buyer) on
127.0.0.1, one more task of its nursery, read-only over ``buyer.db``; ``suanli dashboard --agent`` prints
its URL with the token.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from market.matching import JobRequest, rank_offers
from market.service import now_ms
from node.agent_client import FIELDS, MAX_EVENT_BYTES, PATH_FIELDS
from node.buyer import Console, buy
from node.buyer_config import MAX_EXPOSURE_RANGE
from node.buyrequest import request_from_options
from node.control import listen_private
from node.dashboard.serve import AGENT_PORT as DASHBOARD_PORT
from node.dashboard.serve import serve_dashboard
from node.exitcodes import EXIT_INTERRUPTED, EXIT_SUANLI, SUANLI
from node.overlay import BuyerOverlay, capability_for
from node.paths import AGENT_SOCKET
from p2p.envelope import Signed
from p2p.errors import SuanliError
from p2p.gossip import offer_feed
from p2p.host import HostConfig, Node, open_host
from p2p.identity import NodeKey, public_from_peer_id
from p2p.market_records import Offer
from p2p.offer_query import collect_offers
from settlement.astore import AsyncStore, open_store

log = logging.getLogger("suanli.node.agent")
REQUEST_TIMEOUT_S = 5.0
INITIAL_WAIT_S = 3.0
REFRESH_S = 60.0
REFRESH_WAIT_S = 5.0
MAX_BACKLOG_BYTES = 16 << 20  # job output kept for a client that does not read; beyond it lines are dropped
FLUSH_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 30.0
EXIT_USAGE = EXIT_SUANLI  # node.exitcodes: the same codes as a standalone `suanli run`
EXIT_AGENT_FAILED = EXIT_SUANLI
EXIT_CLIENT_LEFT = EXIT_INTERRUPTED


class RequestError(SuanliError):
    """A request on the agent's socket that cannot be run as it is."""


def parse_run_request(line: bytes) -> tuple[argparse.Namespace, list[str]]:
    """Rule 2: the run options, each of its documented type, and the command; else RequestError."""
    try:
        request = json.loads(line)
    except ValueError:
        raise RequestError("a request is one JSON object on one line") from None
    if not isinstance(request, dict) or request.get("op") != "run":
        raise RequestError('expected {"op": "run", "args": {...}, "command": [...]}')
    fields, command = request.get("args"), request.get("command")
    if not isinstance(fields, dict):
        raise RequestError("args: expected an object")
    unknown, missing = sorted(set(fields) - set(FIELDS)), sorted(set(FIELDS) - set(fields))
    if unknown or missing:
        raise RequestError(f"args: unknown {unknown}, missing {missing}")
    for name, types in FIELDS.items():
        if type(fields[name]) not in types:
            raise RequestError(f"args.{name}: expected {' or '.join(t.__name__ for t in types)}")
    if fields["env"] is not None and not all(isinstance(item, str) for item in fields["env"]):
        raise RequestError("args.env: expected a list of NAME=VALUE strings")
    for name in PATH_FIELDS:
        if fields[name] is not None and not Path(fields[name]).is_absolute():
            raise RequestError(f"args.{name}: expected an absolute path")
    for name, low, high in (("wait", 0, 600), ("negotiate_timeout", 0.1, 600), ("candidates", 1, 100)):
        if not low <= fields[name] <= high:
            raise RequestError(f"args.{name}: expected {low} to {high}")
    if fields["max_exposure"] is not None and not 0 <= fields["max_exposure"] <= MAX_EXPOSURE_RANGE[1]:
        raise RequestError(f"args.max_exposure: expected 0 to {MAX_EXPOSURE_RANGE[1]}")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise RequestError("command: expected a non-empty list of strings")
    return argparse.Namespace(**fields), command


class AgentConsole(Console):
    """A run's output as events for its client; a client that stops reading loses job lines, not notes."""

    def __init__(self, quiet: bool, *, show_receipts: bool = False, verbose: bool = False) -> None:
        super().__init__(quiet, show_receipts=show_receipts, verbose=verbose)
        self._out = bytearray()
        self._wake = trio.Event()
        self._finished = False
        self.dropped_lines = 0

    def _emit(self, event: dict[str, Any], droppable: bool = False) -> None:
        if self._finished:
            return
        data = json.dumps(event).encode() + b"\n"
        if droppable and (len(self._out) + len(data) > MAX_BACKLOG_BYTES or len(data) > MAX_EVENT_BYTES):
            self.dropped_lines += 1
            return
        self._out += data
        self._wake.set()

    def say(self, text: str) -> None:
        if not self.quiet:
            self._emit({"ev": "say", "text": text})

    def log(self, stream: str, data: bytes) -> None:
        if not self.quiet:
            self._emit({"ev": "log", "stream": stream, "b64": base64.b64encode(data).decode()}, droppable=True)

    def result(self, doc: dict[str, Any], indent: int | None = None) -> None:
        self._emit({"ev": "result", "doc": doc, "indent": indent})

    def error(self, text: str) -> None:
        self._emit({"ev": "error", "text": text})

    def finish(self, code: int) -> None:
        if self.dropped_lines:
            self.say(f"suanli: {self.dropped_lines} line(s) of job output were dropped: the client did not read them")
        self._emit({"ev": "exit", "code": code})
        self._finished = True
        self._wake.set()

    async def pump(self, stream: trio.abc.SendStream) -> None:
        """Send what was emitted, in order, until ``finish``; a gone client ends the pump quietly."""
        try:
            while True:
                if not self._out:
                    if self._finished:
                        return
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                data = bytes(self._out)
                self._out.clear()
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._finished = True


@dataclass(eq=False)  # one per run, kept in a set by identity
class _Job:
    cancel: trio.Event = field(default_factory=trio.Event)
    work: trio.CancelScope = field(default_factory=trio.CancelScope)
    in_job: bool = False  # the agreement is made: cancelling now means the cancel protocol

    def stop(self) -> None:
        if self.in_job:
            self.cancel.set()  # the provider stops the job; both sides record the final receipt
        else:
            self.work.cancel()  # nothing agreed yet: just stop


@dataclass
class Agent:
    node: Node
    key: NodeKey
    home: Path
    overlay: BuyerOverlay
    store: AsyncStore
    jobs: set[_Job] = field(default_factory=set)
    handed_out: dict[bytes, bytes] = field(default_factory=dict)  # provider -> the offer id a run was last given
    _ended: trio.Event = field(default_factory=trio.Event)  # set each time a run ends
    dashboard: str | None = None  # Rule 6: its URL (without the token) once it serves

    async def find(self, request: JobRequest, wait_s: float) -> list[Signed[Offer]]:
        """The offers already known when one of them can run the job; else a fresh collection."""
        now = now_ms()
        known = self.overlay.ledger.current(now)
        if not rank_offers([o.record for o in known], request, now, limit=1):
            known = await collect_offers(self.node, self.overlay.ledger, capability=capability_for(request),
                                         wait_s=wait_s)
        self.handed_out = {o.record.provider: o.record_id for o in known}  # every offer known: bounded
        return known

    def set_aside(self, peer_id: str) -> None:
        """Rule 5: a provider that did not answer is not proposed to again on the strength of the same offer;
        a newer offer that arrived during the run (a restarted provider's) is kept for the next run."""
        provider = public_from_peer_id(peer_id)
        held = self.overlay.ledger.latest.get(provider)
        if held is not None and self.handed_out.get(provider, held.record_id) != held.record_id:
            log.info("%s did not answer, but has published a newer offer since: that one is tried next", peer_id)
            return
        if self.overlay.ledger.set_aside(provider):
            log.info("offer of %s set aside until it publishes a newer one: it did not answer", peer_id)

    async def keep_offers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def drain() -> None:  # the subscription queue is bounded: keep it empty (workarounds)
            async for _ in offer_feed(self.node, self.overlay.ledger):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await collect_offers(self.node, self.overlay.ledger, wait_s=INITIAL_WAIT_S)
            task_status.started()
            while True:
                await trio.sleep(REFRESH_S)
                try:
                    await collect_offers(self.node, self.overlay.ledger, wait_s=REFRESH_WAIT_S)
                except SuanliError as exc:
                    log.warning("offer refresh failed: %s", exc)

    async def serve(self, listener: trio.SocketListener) -> None:
        """Accept clients until cancelled (``open_agent`` closes the listener and removes the socket)."""
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self.handle, stream)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    line, rest = await _read_line(stream, b"")
                args, command = parse_run_request(line)
            except (trio.TooSlowError, trio.BrokenResourceError, RequestError) as exc:
                log.info("agent request refused: %s", exc or "no request in time")
                console = AgentConsole(False)
                console.error(str(exc) if isinstance(exc, RequestError)
                              else f"no request within {REQUEST_TIMEOUT_S:g} s")
                console.finish(EXIT_USAGE)
                with trio.move_on_after(FLUSH_TIMEOUT_S):
                    await console.pump(stream)
                return
            job = _Job()
            self.jobs.add(job)
            try:
                console = AgentConsole(args.json, show_receipts=args.show_receipts, verbose=args.verbose)
                await self._serve_run(stream, rest, args, command, job, console)
            finally:
                self.jobs.discard(job)
                self._ended.set()

    async def _serve_run(self, stream: trio.SocketStream, rest: bytes, args: argparse.Namespace,
                         command: list[str], job: _Job, console: AgentConsole) -> None:
        code = EXIT_AGENT_FAILED
        async with trio.open_nursery() as outer:
            pump_scope = trio.CancelScope()

            async def pump() -> None:
                with pump_scope:
                    await console.pump(stream)

            outer.start_soon(pump)
            async with trio.open_nursery() as inner:
                inner.start_soon(_watch_client, stream, rest, job.stop)  # Rule 3
                with job.work:
                    try:
                        request = request_from_options(vars(args), command)
                        code = await buy(self.node, self.key, self.home, request, console,
                                         lambda job_request: self.find(job_request, request.retry.wait_s),
                                         job.cancel, self.store, dry_run=args.dry_run,
                                         started=lambda: setattr(job, "in_job", True), unanswered=self.set_aside)
                    except SuanliError as exc:
                        console.error(str(exc))
                        code = EXIT_USAGE
                        if args.json:
                            console.result({"ok": False, "error": str(exc), "exit_code": code, "exit_source": SUANLI})
                    except Exception:  # a per-connection boundary: one failed run never takes the agent down
                        log.exception("agent run failed")
                        console.say("suanli: the buyer agent failed running this job; see its log")
                        if args.json:
                            console.result({"ok": False, "error": "the buyer agent failed running this job",
                                            "exit_code": code, "exit_source": SUANLI})
                if job.work.cancelled_caught:
                    code = EXIT_CLIENT_LEFT
                inner.cancel_scope.cancel()
            console.finish(code)
            pump_scope.deadline = trio.current_time() + FLUSH_TIMEOUT_S

    async def shutdown(self) -> None:
        """Rule 4: cancel every running job and wait, within a bound, for their final receipts."""
        for job in list(self.jobs):
            job.stop()
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            while self.jobs:
                self._ended = trio.Event()
                await self._ended.wait()

    def status(self) -> dict[str, Any]:
        return {"peer_id": self.key.peer_id, "addrs": self.node.addrs(), "data_dir": str(self.home),
                "offers": len(self.overlay.ledger.current(now_ms())), "jobs": len(self.jobs),
                "dashboard": self.dashboard}


async def _read_line(stream: trio.SocketStream, buffer: bytes) -> tuple[bytes, bytes]:
    """One line (without its newline) and what came after it; RequestError past ``MAX_EVENT_BYTES``."""
    while b"\n" not in buffer:
        if len(buffer) > MAX_EVENT_BYTES:
            raise RequestError(f"a request line is at most {MAX_EVENT_BYTES} bytes")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError("the client closed the connection")
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    return line, rest


async def _watch_client(stream: trio.SocketStream, buffer: bytes, cancel: Any) -> None:
    """Rule 3: ``{"op": "cancel"}`` or the end of the connection cancels; other lines are ignored."""
    while True:
        try:
            line, buffer = await _read_line(stream, buffer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, RequestError):
            cancel()
            return
        try:
            op = json.loads(line).get("op")
        except (ValueError, AttributeError):
            op = None
        if op == "cancel":
            cancel()


@asynccontextmanager
async def open_agent(key: NodeKey, home: Path, bootstrap: tuple[str, ...], listen: tuple[str, ...], *,
                     dashboard_port: int | None = DASHBOARD_PORT) -> AsyncIterator[Agent]:
    """Joined, offers collected, the socket open, the dashboard served (Rule 6; ``dashboard_port`` None: none,
    0: any free port); on exit Rule 4, then the overlay is left."""
    path = home / AGENT_SOCKET
    listener = await listen_private(path)  # Rule 1, before joining: a second agent stops here
    try:
        overlay = BuyerOverlay()
        config = HostConfig(key=key, listen=listen, bootstrap=bootstrap, dht_mode="client", topics=overlay.topics)
        async with open_host(config) as node, open_store(home / "buyer.db") as store:
            agent = Agent(node, key, home, overlay, store)
            async with trio.open_nursery() as nursery:
                if dashboard_port is not None:
                    agent.dashboard = await nursery.start(partial(serve_dashboard, home, dashboard_port, agent.status,
                                                                  side="buyer"))
                await nursery.start(agent.keep_offers)
                nursery.start_soon(agent.serve, listener)
                try:
                    yield agent
                finally:
                    with trio.CancelScope(shield=True):
                        await agent.shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
            await trio.Path(path).unlink(missing_ok=True)
