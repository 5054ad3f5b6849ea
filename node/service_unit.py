"""The systemd unit that runs a Suanli node as a service (issue 20): pure text, no IO (STYLE §1).

``render_unit(UnitSpec)`` returns the unit file for ``suanli provide`` (the provider daemon) or
``suanli agent`` (the resident buyer agent), as a system unit (root; ``multi-user.target``) or a user unit
(``--user``; ``default.target``).

Rule 1 (restart): ``Restart=on-failure`` with a pause, bounded by a start limit, so a crash loop stops.
Rule 2 (stop): ``KillSignal=SIGINT``: the provider stops its running jobs, each with a final receipt, then
withdraws its offer (node.commands.provide); ``TimeoutStopSec`` leaves it the time to.
Rule 3 (sandbox): the file system is read-only to the node (``ProtectSystem=strict``) except its data
directory (``ReadWritePaths``); home directories are read-only; ``/tmp`` is private; kernel tunables,
modules, logs and the clock are out of reach; only Unix, IP and netlink sockets. The Docker socket stays
reachable: connecting to a Unix socket is not a write to its file system, so a read-only ``/run`` does not
stop it (and binding the socket would keep a stale one after Docker restarts). The provider keeps
``CAP_SYS_ADMIN`` and ``/dev`` (``PrivateDevices`` off) because each job's disk is a loop device
(sandbox.disk). A user unit gets the subset that needs no privilege (user managers may lack namespaces).
Rule 4 (logs): stdout and stderr go to the journal under ``SyslogIdentifier=suanli-<role>``.
Rule 5: a path systemd would read differently (whitespace, quotes, backslashes, control characters) is
refused (UnitError); ``%`` is escaped as ``%%``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p2p.errors import ConfigError

ROLES = ("provide", "agent")
DESCRIPTIONS = {"provide": "Suanli provider: sells this machine's idle compute time",
                "agent": "Suanli buyer agent: starts `suanli run` jobs at once"}


class UnitError(ConfigError, ValueError):  # in the error tree (issue 14 item 4); a ValueError as before
    """A value that cannot be written into a unit file as it is (Rule 5)."""


@dataclass(frozen=True)
class UnitSpec:
    role: str  # provide | agent
    exec_args: tuple[str, ...]  # the program and its arguments, absolute program path first
    data_dir: Path
    user: bool = False  # a user unit (systemctl --user)
    environment: dict[str, str] = field(default_factory=dict)


def unit_name(role: str) -> str:
    return f"suanli-{role}.service"


def _word(text: str) -> str:
    if not text or any(c.isspace() or c in "\"'\\;" or ord(c) < 32 or ord(c) == 127 for c in text):
        raise UnitError(f"{text!r} cannot be written into a systemd unit as it is: use a path without spaces, "
                        "quotes, backslashes or semicolons")
    return text.replace("%", "%%")


_SYSTEM_SANDBOX = """\
ProtectSystem=strict
ReadWritePaths={data_dir}
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
"""

_COMMON_SANDBOX = """\
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
UMask=0077
"""


def render_unit(spec: UnitSpec) -> str:
    """The unit file's text (Rules 1-5)."""
    if spec.role not in ROLES:
        raise UnitError(f"role must be one of {', '.join(ROLES)}, not {spec.role!r}")
    data_dir = _word(str(spec.data_dir))
    command = " ".join(_word(a) for a in spec.exec_args)
    env = {"SUANLI_HOME": str(spec.data_dir), "PYTHONUNBUFFERED": "1", **spec.environment}
    environment = "".join(f"Environment={_word(k)}={_word(v)}\n" for k, v in env.items())
    after = "network-online.target" + ("" if spec.user else " docker.service")
    sandbox = ("" if spec.user else _SYSTEM_SANDBOX.format(data_dir=data_dir)) + _COMMON_SANDBOX
    target = "default.target" if spec.user else "multi-user.target"
    return (
        "# Written by `suanli service install`; `suanli service uninstall` removes it.\n"
        "[Unit]\n"
        f"Description={DESCRIPTIONS[spec.role]}\n"
        f"After={after}\n"
        "Wants=network-online.target\n"
        "StartLimitIntervalSec=300\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={command}\n"
        f"{environment}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "KillSignal=SIGINT\n"
        "TimeoutStopSec=120\n"
        "StandardOutput=journal\n"
        "StandardError=journal\n"
        f"SyslogIdentifier=suanli-{spec.role}\n"
        f"{sandbox}"
        "\n"
        "[Install]\n"
        f"WantedBy={target}\n"
    )
