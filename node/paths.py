"""Where a node keeps its files (the data directory, the default key and database paths) and where a
command line's node joins (bootstrap peers, listen addresses).

The data directory is ``$SUANLI_HOME`` when set, else ``$XDG_DATA_HOME/suanli``, else
``~/.local/share/suanli``.

Rule (L3): whatever creates the data directory creates it mode 0700 (``mkdir(mode=0o700)`` in the
provider, the agent, ``p2p.identity.save_key`` and ``settlement.store.make_private``), and every file of
ours in it is 0600: keys, databases and their -wal/-shm (a buyer's proposals hold its ``--env``
values), the control and agent sockets. Exports (``suanli export``) are written 0600 too. An existing
directory's mode is left as the operator set it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from p2p.errors import SuanliError

AGENT_SOCKET = "agent.sock"  # the resident buyer agent's socket in its data directory (node.agent)


def data_dir(given: str | os.PathLike[str] | None = None) -> Path:
    """``given`` (a ``--data-dir``) when there is one, else the default above."""
    if given:
        return Path(given)
    home = os.environ.get("SUANLI_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "suanli"


def default_key_path() -> Path:
    return data_dir() / "node.key"


def default_db_path() -> Path:
    return data_dir() / "node.db"


def bootstrap_peers(given: Sequence[str] | None) -> tuple[str, ...]:
    """``--bootstrap`` values, else ``$SUANLI_BOOTSTRAP`` (comma-separated); SuanliError when neither."""
    peers = tuple(given or ()) or tuple(filter(None, os.environ.get("SUANLI_BOOTSTRAP", "").split(",")))
    if not peers:
        raise SuanliError("give --bootstrap MULTIADDR (or set SUANLI_BOOTSTRAP) to join a network")
    return peers


def client_listen(local: bool) -> tuple[str, ...]:
    """A buyer-side node's listen address: any free port, on loopback only with ``--local``."""
    return ("/ip4/127.0.0.1/tcp/0",) if local else ("/ip4/0.0.0.0/tcp/0",)
