"""The go-libp2p daemon for the interoperability suite: fetched if missing, else skipped or failed.

Skipped with a reason when ``p2pd`` is absent and ``scripts/fetch_p2pd.sh`` cannot fetch it, except
where SUANLI_REQUIRE_INTEROP=1 (CI): there a missing daemon is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The suite's helper modules (p2pd, p2pd_pb, interop_harness) are imported by name whatever pytest's
# import mode (with --import-mode=importlib pytest puts no test folder on sys.path).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from p2pd import REPO, daemon_path  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # Also belongs in pyproject's [tool.pytest.ini_options] markers; registered here so that
    # --strict-markers accepts it either way.
    config.addinivalue_line("markers", "interop: runs against a real go-libp2p node (the p2pd daemon)")


@pytest.fixture(scope="session")
def p2pd_binary():
    path = daemon_path()
    detail = ""
    if not os.access(path, os.X_OK) and "SUANLI_P2PD" not in os.environ:
        try:
            done = subprocess.run(["bash", str(REPO / "scripts" / "fetch_p2pd.sh")], cwd=REPO,
                                  capture_output=True, text=True, timeout=300)
            detail = " | ".join((done.stdout + done.stderr).strip().splitlines())[-2000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = repr(exc)
    if not os.access(path, os.X_OK):
        reason = f"go-libp2p daemon {path} is missing and scripts/fetch_p2pd.sh could not fetch it: {detail}"
        if os.environ.get("SUANLI_REQUIRE_INTEROP") == "1":
            pytest.fail(f"SUANLI_REQUIRE_INTEROP=1 but {reason}")
        pytest.skip(reason)
    return path
