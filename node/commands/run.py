"""``suanli run [options] -- COMMAND...``: the buyer's light client, deliberately like ``docker run``.

The options become a checked ``BuyRequest`` (node.buyrequest), which node.buyer runs: discover, rank,
negotiate, send inputs (and the image if the provider lacks it), print the job's output live, verify and
countersign every receipt, write the outputs, keep the evidence, and exit with the job's exit code.
Exit codes of its own: node.exitcodes (125 usage or suanli's own error, 126 no provider could take the
job, 127 the job did not end by itself), named by ``exit_source`` in --json. With a buyer agent running
(node.agent), the job is handed to it instead (node.agent_client).

Rule 1 (issue 17 item 5): every option is checked before anything is created or sent (no key, no
database, no dial): a mistake is one line and exit 125, and never reaches a provider.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from node.buyrequest import (  # noqa: F401 - parse_* and choose_image re-exported for their callers
    BuyRequest,
    choose_image,
    parse_disk_mib,
    parse_env,
    parse_memory_mib,
    request_from_options,
)
from node.exitcodes import EXIT_SUANLI, SUANLI
from p2p.errors import SuanliError

log = logging.getLogger("suanli.run")


def cmd_run(args: argparse.Namespace) -> int:
    """Rule 1, then the job (through the agent when one runs); a SuanliError is one line and exit 125
    (with --json, also a document on stdout saying so)."""
    try:
        return _cmd_run(args)
    except SuanliError as exc:
        print(f"suanli: error: {exc}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": EXIT_SUANLI, "exit_source": SUANLI}),
                  flush=True)
        return EXIT_SUANLI


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SuanliError("give the command to run after --, e.g. suanli run --image sha256:... -- echo hi")
    socket_path = agent_socket(args)
    if socket_path is not None:
        from node.agent_client import AgentUnavailable, run_via_agent

        try:
            return run_via_agent(socket_path, args, command)
        except AgentUnavailable as exc:
            if args.agent:
                raise SuanliError(str(exc)) from None
            # a stale socket of an agent that is gone: run without it
    from node.paths import bootstrap_peers, data_dir

    home = data_dir(args.data_dir)
    request = check_job_args(args, home, command)  # Rule 1: before the key, the database or the network
    bootstrap = bootstrap_peers(args.bootstrap)
    from p2p.host import parse_multiaddr  # imports libp2p, which the run needs anyway

    for addr in bootstrap:
        parse_multiaddr(addr, what="--bootstrap", need_peer=True)
    key = buyer_key(args, home)
    import trio

    from node.buyer import Console, run_once
    from node.logsetup import configure

    configure(args.verbose)
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    console = Console(args.json, show_receipts=args.show_receipts, verbose=args.verbose)
    return trio.run(partial(run_once, local=args.local, dry_run=args.dry_run, interruptible=True),
                    request, key, home, bootstrap, console)


def buyer_key(args: argparse.Namespace, home: Path) -> Any:
    """``--key PATH`` must exist (a typo must not become a new identity); only the default key, in the
    data directory, is created when missing."""
    from p2p.identity import load_key, load_or_create_key

    if args.key:
        return load_key(args.key)
    key, _ = load_or_create_key(home / "node.key")
    return key


def agent_socket(args: argparse.Namespace) -> Path | None:
    """The resident agent ``suanli run`` should hand the job to, or None to run it in this process.

    ``--agent PATH`` names one; otherwise the data directory's ``agent.sock`` is used when it exists,
    unless ``--no-agent`` or ``--key`` (a key of the caller's choice, not the agent's) is given.
    """
    if args.agent:
        return Path(args.agent)
    if args.no_agent or args.key:
        return None
    from node.paths import AGENT_SOCKET, data_dir

    path = data_dir(args.data_dir) / AGENT_SOCKET
    return path if path.exists() else None


def check_job_args(args: argparse.Namespace, home: Path, command: list[str]) -> BuyRequest:
    """The checks of the job's options that need no network (Rule 1): a mistake is reported before a key,
    a database or a connection is made. Reads nothing large and creates nothing."""
    request = request_from_options(vars(args), command)
    if home.exists() and not home.is_dir():
        raise SuanliError(f"--data-dir {home}: exists and is not a directory")
    from node.buyer_config import load_max_exposure

    load_max_exposure(home, args.max_exposure)  # the flag, else buyer.toml
    return request
