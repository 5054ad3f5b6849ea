"""Issue 17, the CLI's contract with a new user and with scripts, through the real CLI (a subprocess):
tests keep out of the real home (item 11), ``--version``, ``demo --providers`` in range, ``run --help``
states its defaults and the exit codes (items 2 and 11), the exit-code table itself, ``--memory 1.5g``
(item 5), and libp2p's loggers stay quiet after libp2p is imported (item 1)."""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from node.exitcodes import EXIT_JOB_LOST, EXIT_NO_PROVIDER, EXIT_SUANLI, MEANINGS, job_exit_code


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_tests_run_in_a_private_home(private_home):
    real = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert Path.home() == private_home != real
    assert os.environ["SUANLI_HOME"].startswith(str(private_home))
    done = _cli("keys", "new")  # the default key path: the data directory in force
    assert done.returncode == 0, done.stderr
    assert (Path(os.environ["SUANLI_HOME"]) / "node.key").is_file()


def test_version():
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("suanli ") and done.stderr == ""


@pytest.mark.parametrize("n", ["0", "-1", "9", "two"])
def test_demo_refuses_a_number_of_providers_it_cannot_start(n):
    done = _cli("demo", "--providers", n)
    assert done.returncode == 2 and "--providers" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_run_help_states_defaults_and_exit_codes():
    done = _cli("run", "--help")
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    for phrase in ("time to collect offers (default 3)", "best first (default 5)", "to answer (default 10)",
                   "125 suanli could not run", "126 no provider", "127 the job did not end", '"exit_source"'):
        assert phrase in text, phrase


def test_exit_codes_are_docker_like_and_the_jobs_own_pass_through():
    assert (EXIT_SUANLI, EXIT_NO_PROVIDER, EXIT_JOB_LOST) == (125, 126, 127) and set(MEANINGS) >= {125, 126, 127}
    assert job_exit_code(0) == (0, "job") and job_exit_code(3) == (3, "job") and job_exit_code(126) == (126, "job")
    assert job_exit_code(137) == (137, "job") and job_exit_code(255) == (255, "job")
    for odd in (None, -1, 256, -9):
        assert job_exit_code(odd) == (EXIT_JOB_LOST, "suanli")


@pytest.mark.parametrize("text, mib", [("1.5g", 1536), ("0.5g", 512), ("2.25G", 2304), ("1.5m", 1), ("512m", 512),
                                       ("6291456", 6), ("1.5gib", 1536), ("0.001g", 1)])
def test_memory_sizes_may_be_fractional(text, mib):
    from node.buyrequest import parse_memory_mib
    from p2p.errors import SuanliError

    if mib < 6:
        with pytest.raises(SuanliError, match="too small"):
            parse_memory_mib(text)
    else:
        assert parse_memory_mib(text) == mib


def test_libp2p_loggers_stay_quiet_after_libp2p_is_imported(monkeypatch):
    """Before the fix, importing libp2p set its logger to WARNING with no handler and propagate off:
    its warnings went to Python's last-resort handler, on stderr, whatever level we had set."""
    from node.logsetup import configure, quiet_libp2p

    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(verbose=False)
        for name in ("libp2p", "libp2p.network.swarm", "libp2p.network.auto_connector", "multiaddr"):
            logger = logging.getLogger(name)
            assert not logger.isEnabledFor(logging.ERROR), (name, logger.getEffectiveLevel())
        assert logging.getLogger("libp2p").propagate and not logging.getLogger("libp2p").handlers
        configure(verbose=True)
        assert logging.getLogger("libp2p.network.swarm").isEnabledFor(logging.DEBUG)
    finally:
        quiet_libp2p(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_a_libp2p_error_after_configure_and_import_reaches_no_one(monkeypatch):
    """The order of a real command: configure, then libp2p imported (by p2p.host); then an error logged
    by libp2p (as a dial of a peer that has left does) must not reach stderr."""
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    code = ("import logging\nfrom node.logsetup import configure\nconfigure(False)\nimport p2p.host\n"
            "logging.getLogger('libp2p.network.swarm').error('SPAM')\n"
            "logging.getLogger('libp2p').warning('SPAM')\nlogging.getLogger('suanli.x').warning('ours')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SPAM" not in done.stderr and "ours" in done.stderr, done.stderr


def test_a_libp2p_error_after_a_host_resets_its_level_reaches_no_one(monkeypatch):
    """p2p.host sets libp2p's logger back to ERROR when a host opens; our handler still drops it."""
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    code = ("import logging\nfrom node.logsetup import configure\nconfigure(False)\n"
            "from p2p import workarounds\nworkarounds.quiet_libp2p_logging()\n"
            "logging.getLogger('libp2p.transport.tcp.tcp').error('SPAM')\n"
            "logging.getLogger('suanli.x').warning('ours')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SPAM" not in done.stderr and "ours" in done.stderr, done.stderr


def test_demo_logs_are_private_whatever_the_umask(tmp_path):
    from node.commands.demo import Processes

    procs = Processes()
    old = os.umask(0)
    try:
        procs.start("true", ["true"], tmp_path / "node.log")
    finally:
        os.umask(old)
        procs.stop_all(timeout_s=10)
    assert (tmp_path / "node.log").stat().st_mode & 0o777 == 0o600


def test_a_failed_demo_says_why():
    from node.commands.demo import why_failed

    assert "exited 126 (no provider could take the job" in why_failed(126, 0, 0)
    assert "exited 3 (the job's own exit code" in why_failed(3, 0, 1)
    assert "no agreement" in why_failed(0, 0, 0) and "found 2 problem(s)" in why_failed(0, 2, 1)


def test_run_without_a_command_is_one_line():
    done = _cli("run", "--image", "sha256:" + "0" * 64, "--")
    assert done.returncode == EXIT_SUANLI and done.stderr.count("\n") == 1 and "after --" in done.stderr


def test_the_python_request_has_the_clis_defaults():
    """node.buyrequest Rule 2: BuyRequest.build's defaults are `suanli run`'s."""
    from node.buyrequest import DEFAULTS
    from node.cli import build_parser

    args = build_parser().parse_args(["run", "--", "true"])
    assert {name: getattr(args, name) for name in DEFAULTS} == DEFAULTS


def test_a_request_is_built_and_checked_as_the_cli_checks_it(tmp_path):
    from node.buyrequest import BuyRequest
    from p2p.errors import SuanliError

    image = "sha256:" + "ab" * 32
    request = BuyRequest.build(["echo", "hi"], image=image, cpus=0.5, memory="1.5g", env=["K=V"],
                               input=str(tmp_path), candidates=2)
    assert request.command == ("echo", "hi") and request.resources.cpu_millis == 500
    assert request.resources.memory_mib == 1536 and dict(request.env) == {"K": "V"} and request.inputs == tmp_path
    assert request.retry.candidates == 2 and request.max_duration_s == 600 and request.max_price_micros_per_s == 10_000
    for bad, match in (({"cpus": 0}, "--cpus"), ({"memory": "5m"}, "--memory"), ({"image": "busybox"}, "pin"),
                       ({"colour": "red"}, "unknown option")):
        with pytest.raises(SuanliError, match=match):
            BuyRequest.build(["true"], **{"image": image, **bad})
