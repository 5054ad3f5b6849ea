"""``suanli service install|uninstall|status``: run the provider (or the buyer agent) as a systemd service.

The unit's text is node.service_unit's (pure); this module finds the paths, writes or removes the file,
and asks ``systemctl`` to reload, enable and start it where systemd runs.

Rule 1: the unit directory is ``--unit-dir``, else ``$SUANLI_UNIT_DIR``, else systemd's own
(``/etc/systemd/system``; with ``--user``, ``$XDG_CONFIG_HOME/systemd/user``). Only with systemd's own
directory and a running systemd (``/run/systemd/system`` exists) is ``systemctl`` called; otherwise the
command says what to run.
Rule 2: every mistake is one line (SuanliError) and exit 2; a ``systemctl`` that fails is reported with
its own message, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from node.service_unit import UnitError, UnitSpec, render_unit, unit_name
from p2p.errors import SuanliError

SYSTEMD_RUNNING = Path("/run/systemd/system")
SYSTEMCTL_TIMEOUT_S = 60


def unit_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """(the directory, whether it is systemd's own): Rule 1."""
    given = getattr(args, "unit_dir", None) or os.environ.get("SUANLI_UNIT_DIR")
    if given:
        return Path(given), False
    if args.user:
        xdg = os.environ.get("XDG_CONFIG_HOME")
        return (Path(xdg) if xdg else Path.home() / ".config") / "systemd" / "user", True
    return Path("/etc/systemd/system"), True


def _program() -> list[str]:
    """The ``suanli`` console script next to this interpreter, else ``python -m node.cli``."""
    script = Path(sys.executable).parent / "suanli"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "node.cli"]


def build_spec(args: argparse.Namespace) -> UnitSpec:
    from node.paths import data_dir

    env: dict[str, str] = {}
    if args.role == "provide":
        if not args.config:
            raise SuanliError("give --config FILE: the provider's configuration (suanli provide --init-config "
                              "FILE writes an example)")
        from node.config import load_config

        config_path = Path(args.config).resolve()
        home = load_config(config_path).data_dir.resolve()  # a bad configuration is refused here, not at boot
        exec_args = [*_program(), "provide", "--config", str(config_path)]
    else:
        from node.paths import bootstrap_peers

        home = data_dir(args.data_dir).resolve()
        peers = bootstrap_peers(args.bootstrap)
        env["SUANLI_BOOTSTRAP"] = ",".join(peers)
        exec_args = [*_program(), "agent", "--data-dir", str(home)]
    return UnitSpec(role=args.role, exec_args=tuple(exec_args), data_dir=home, user=args.user, environment=env)


def _systemctl(user: bool, *words: str) -> subprocess.CompletedProcess[str]:
    cmd = ["systemctl", *(["--user"] if user else []), *words]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SuanliError(f"{' '.join(cmd)} failed: {exc}") from None


def _manage() -> bool:
    return SYSTEMD_RUNNING.is_dir() and shutil.which("systemctl") is not None


def cmd_install(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    try:
        text = render_unit(spec)
    except UnitError as exc:
        raise SuanliError(str(exc)) from None
    if args.print:
        sys.stdout.write(text)
        return 0
    directory, systemds = unit_dir(args)
    path = directory / unit_name(args.role)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        spec.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # ReadWritePaths must exist at start
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise SuanliError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path}")
    flag = "--user " if args.user else ""
    if systemds and _manage():
        for words in (("daemon-reload",), ("enable", "--now", unit_name(args.role))):
            done = _systemctl(args.user, *words)
            if done.returncode != 0:
                raise SuanliError(f"systemctl {flag}{' '.join(words)}: {done.stderr.strip() or done.returncode}")
        print(f"started and enabled {unit_name(args.role)}; logs: journalctl {flag}-u {unit_name(args.role)}")
    else:
        print(f"to start it: systemctl {flag}daemon-reload && systemctl {flag}enable --now {unit_name(args.role)}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    directory, systemds = unit_dir(args)
    path = directory / unit_name(args.role)
    if not path.exists():
        raise SuanliError(f"no {unit_name(args.role)} in {directory}: nothing to uninstall")
    if systemds and _manage():
        _systemctl(args.user, "disable", "--now", unit_name(args.role))  # a unit already stopped is fine
    try:
        path.unlink()
    except OSError as exc:
        raise SuanliError(f"cannot remove {path}: {exc.strerror or exc}") from None
    if systemds and _manage():
        _systemctl(args.user, "daemon-reload")
    print(f"removed {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    directory, systemds = unit_dir(args)
    path = directory / unit_name(args.role)
    if not path.exists():
        print(f"{unit_name(args.role)}: not installed in {directory} (suanli service install)")
        return 3  # systemctl's "not running" code
    print(f"{unit_name(args.role)}: installed at {path}")
    if not (systemds and _manage()):
        print("systemd is not managing it here (no running systemd, or a unit directory of your own)")
        return 3
    done = _systemctl(args.user, "status", "--no-pager", unit_name(args.role))
    sys.stdout.write(done.stdout)
    return done.returncode
