"""``suanli dashboard``: print the local provider's dashboard URL with its token, and open a browser where
one exists (node.dashboard.serve writes both files the daemon's data directory holds)."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from p2p.errors import SuanliError


def dashboard_url(home: Path) -> str:
    """The URL with ``?token=``, or SuanliError saying why there is none."""
    from node.dashboard.serve import TOKEN_FILE, URL_FILE

    try:
        url = json.loads((home / URL_FILE).read_text())["url"]
        token = (home / TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        raise SuanliError(f"no dashboard is running for {home}: start `suanli provide` (with [dashboard] enabled) "
                          "or give --data-dir DIR") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SuanliError(f"cannot read the dashboard's files in {home}: {exc}") from None
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=2):
            pass
    except OSError:
        raise SuanliError(f"the dashboard at {url} does not answer: is `suanli provide` still running?") from None
    return f"{url}?token={token}"


def cmd_dashboard(args: argparse.Namespace) -> int:
    from node.paths import data_dir

    if args.config:
        from node.config import load_config

        home = load_config(args.config).data_dir
    else:
        home = data_dir(args.data_dir)
    url = dashboard_url(home)
    print(url, flush=True)
    if not args.no_open and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        import webbrowser

        webbrowser.open(url)
    return 0
