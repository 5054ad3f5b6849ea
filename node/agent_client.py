"""``suanli run`` through the resident buyer agent (``suanli agent``, node.agent): the thin client.

Standard library only, so a run costs tens of milliseconds before the job is on its way: the agent has
already joined the overlay, knows the live offers and keeps the buyer's key and database open, as
dockerd does for the docker CLI. The protocol is JSON lines over the agent's unix socket (mode 0600,
in the buyer's data directory):

- client to agent: ``{"op": "run", "args": {...}, "command": [...]}`` once, then ``{"op": "cancel"}``
  on Ctrl-C;
- agent to client: ``{"ev": "say", "text"}`` (a note for stderr), ``{"ev": "log", "stream", "b64"}``
  (one line of the job's output), ``{"ev": "result", "doc", "indent"}`` (the JSON document for stdout),
  ``{"ev": "error", "text"}`` (a usage error), and ``{"ev": "exit", "code"}`` last: the exit code of
  ``suanli run`` (node.exitcodes: the job's own, or 125/126/127/130, the same as a run without the agent).

Rule 1: the client closing the connection means cancel; the agent never leaves a job running for nobody.
Rule 2: paths are made absolute here, since the agent's working directory is not the caller's.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from p2p.errors import PeerUnreachableError  # standard library only, like this module

# The options of ``suanli run`` that travel to the agent, with the JSON types each may have. The
# network (--bootstrap, --local) and the identity (--key, --data-dir) are the agent's own.
FIELDS: dict[str, tuple[type, ...]] = {
    "image": (str, type(None)), "image_archive": (str, type(None)), "gpus": (int,),
    "gpu_model": (str, type(None)), "gpu_memory": (int, type(None)), "cpus": (float, int), "memory": (str,),
    "disk": (str,),
    "max_price": (int,), "max_duration": (int,), "max_exposure": (int, type(None)), "input": (str, type(None)),
    "output": (str, type(None)),
    "env": (list, type(None)), "wait": (float, int), "candidates": (int,), "negotiate_timeout": (float, int),
    "show_receipts": (bool,), "dry_run": (bool,), "json": (bool,), "verbose": (bool,), "force": (bool,),
    "preemptible": (bool,), "on_preempt": (str,),
}
PATH_FIELDS = ("input", "output", "image_archive")
MAX_EVENT_BYTES = 1 << 20
EXIT_AGENT_LOST = 125  # node.exitcodes.EXIT_SUANLI (not imported: this module stays standard library only):
# the agent went away, suanli's own failure


class AgentUnavailable(PeerUnreachableError):  # in the error tree (issue 14 item 4): environment
    """Nothing answers at the socket (no agent, or a stale socket file of one that is gone)."""


def run_request(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    fields = {name: getattr(args, name) for name in FIELDS}
    for name in PATH_FIELDS:
        if fields[name]:
            fields[name] = os.path.abspath(fields[name])
    return {"op": "run", "args": fields, "command": command}


def run_via_agent(path: Path, args: argparse.Namespace, command: list[str]) -> int:
    """Hand the job to the agent at ``path``, relay what it reports, and return the exit code."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise AgentUnavailable(f"no buyer agent answers at {path}: {exc.strerror or exc}") from None
    cancelled = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal cancelled
        if cancelled:
            raise KeyboardInterrupt  # the agent still finishes the cancellation and keeps the receipts
        cancelled = True
        if not args.json:
            print("suanli: cancelling the job (Ctrl-C again to leave; the agent finishes the cancel)",
                  file=sys.stderr, flush=True)
        try:
            sock.sendall(b'{"op": "cancel"}\n')
        except OSError:
            pass

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with sock, sock.makefile("rb") as events:
            sock.sendall(json.dumps(run_request(args, command)).encode() + b"\n")
            while True:
                line = events.readline(MAX_EVENT_BYTES)
                if not line:
                    break
                code = _relay(line)
                if code is not None:
                    return code
    except OSError as exc:
        return _agent_lost(args, f"lost the buyer agent at {path}: {exc.strerror or exc}")
    finally:
        signal.signal(signal.SIGINT, previous)
    return _agent_lost(args, f"the buyer agent at {path} went away during the run; its database keeps what "
                             "was co-signed")


def _agent_lost(args: argparse.Namespace, message: str) -> int:
    print(f"suanli: {message}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"ok": False, "error": message, "exit_code": EXIT_AGENT_LOST, "exit_source": "suanli"}),
              flush=True)
    return EXIT_AGENT_LOST


def _relay(line: bytes) -> int | None:
    try:
        event = json.loads(line)
        kind = event["ev"]
    except (ValueError, KeyError, TypeError):
        print("suanli: the buyer agent sent something unreadable; ignoring it", file=sys.stderr)
        return None
    if kind == "say":
        print(event["text"], file=sys.stderr, flush=True)
    elif kind == "log":
        out = sys.stdout if event["stream"] == "stdout" else sys.stderr
        out.buffer.write(base64.b64decode(event["b64"]) + b"\n")
        out.flush()
    elif kind == "result":
        print(json.dumps(event["doc"], indent=event.get("indent")), flush=True)
    elif kind == "error":
        print(f"suanli: error: {event['text']}", file=sys.stderr)
    elif kind == "exit":
        code: int = event["code"]
        return code
    return None
