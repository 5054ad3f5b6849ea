"""``suanli dashboard``: print the local provider's dashboard URL with its token (``--agent``: the buyer
agent's), and open a browser where one exists (node.dashboard.serve writes both files the daemon's data
directory holds: Rule 2 there)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from p2p.errors import SuanliError


def dashboard_url(home: Path, *, agent: bool = False) -> str:
    """The URL with ``?token=``, or SuanliError saying why there is none; ``agent``: the buyer's side."""
    from node.dashboard.serve import files_for

    token_file, url_file = files_for("buyer" if agent else "provider")
    daemon = "suanli agent" if agent else "suanli provide"
    try:
        url = json.loads((home / url_file).read_text())["url"]
        token = (home / token_file).read_text().strip()
    except FileNotFoundError:
        started = "`suanli agent`" if agent else "`suanli provide` (with [dashboard] enabled)"
        raise SuanliError(f"no {'buyer agent ' if agent else ''}dashboard is running for {home}: start {started} "
                          "or give --data-dir DIR") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SuanliError(f"cannot read the dashboard's files in {home}: {exc}") from None
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2):
            pass
    except OSError:
        raise SuanliError(f"the dashboard at {url} does not answer: is `{daemon}` still running?") from None
    return f"{url}?token={token}"


def cmd_dashboard(args: argparse.Namespace) -> int:
    from node.paths import data_dir

    if getattr(args, "config", None):
        from node.config import load_config

        home = load_config(args.config).data_dir
    else:
        home = data_dir(args.data_dir)
    url = dashboard_url(home, agent=bool(getattr(args, "agent", False)))
    print(url, flush=True)
    if not args.no_open and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import webbrowser

        webbrowser.open(url)
    return 0
