"""What the dashboard's browser tests share (tests/dashboard): a provider process whose dashboard listens
on a free port, and a plain HTTP GET that returns the status of an error too."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def start_dashboard_provider(procs: Any, root: Path, boot: str) -> tuple[Any, dict[str, Any]]:
    """``suanli provide`` under ``root / "provider"``, joined through ``boot``, its dashboard on any free port:
    (the process, its ready line)."""
    import cli_helpers as _h

    config = root / "provider.toml"
    config.write_text(_h.PROVIDER_TOML.format(
        data_dir=root / "provider", bootstrap=boot, cpu_price=40, interval_ms=500,
        countersign_timeout_ms=3000, grace_ms=3000, exposure_cap_micros=100_000) + "\n[dashboard]\nport = 0\n")
    provider = procs.start("provider", [*_h.suanli(), "provide", "--config", str(config), "--json"])
    return provider, provider.json_line("the provider ready", 90)


def http_get(url: str, **headers: str) -> tuple[int, str]:
    """(status, body) of a GET, a 4xx or 5xx included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
