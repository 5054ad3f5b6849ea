"""Where a node keeps its files: the data directory and the default key and database paths.

The data directory is ``$SUANLI_HOME`` when set, else ``$XDG_DATA_HOME/suanli``, else
``~/.local/share/suanli``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
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
