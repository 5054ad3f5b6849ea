"""The ``suanli`` command line: one entry point for operators, buyers, bootstrap hosts and auditors.

Rule 1: offline commands (``keys``, ``export``, ``audit``, ``settle``, ``--help``) never import
libp2p (an import costs about a second); each subcommand imports what it needs when it runs.
Rule 2: a mistake of the user's is one line on stderr and a non-zero exit, never a traceback.
Exit codes: 0 success; 1 the audit found problems; 2 unusable input or a usage/config error.
``suanli run`` has Docker's contract instead (node.exitcodes): the job's own code, or 125/126/127.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from p2p import relay_limits
from p2p.errors import SuanliError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors exit with ``usage_exit`` (2, as argparse's; ``run``: 125, node.exitcodes).
    ``one_line``: the error alone, without the usage line before it (Rule 2 for ``run``, issue 17 item 5)."""

    usage_exit = EXIT_UNUSABLE
    one_line = False

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.one_line:
            self.exit(self.usage_exit, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """``--version``: read from the installed package only when asked (Rule 1: --help stays cheap)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print suanli's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("suanli")
        except PackageNotFoundError:
            ours = "unknown (not installed)"
        print(f"suanli {ours}")
        parser.exit(0)


def _add_keys(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="create or show the node's Ed25519 key (its libp2p identity)")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True, metavar="{new,show}")
    new = ksub.add_parser("new", help="create a key file (mode 0600) and print its peer id")
    new.add_argument("--out", help="key file to write (default: <data dir>/node.key)")
    new.add_argument("--force", action="store_true", help="overwrite an existing key file")
    new.add_argument("--json", action="store_true", help="print one JSON object")
    new.set_defaults(run="node.commands.keys:cmd_new")
    show = ksub.add_parser("show", help="print the peer id and public key of a key file")
    show.add_argument("path", nargs="?", help="key file (default: <data dir>/node.key)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(run="node.commands.keys:cmd_show")


def _add_evidence(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = sub.add_parser("export", help="write one agreement's (or every agreement's) evidence to a bundle")
    export.add_argument("--db", required=True, help="the node database to read")
    export.add_argument("--agreement", help="agreement id (hex, a unique prefix is enough); default: all")
    export.add_argument("--out", required=True, help="bundle file to write (must not exist unless --force)")
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.set_defaults(run="node.commands.evidence:cmd_export")

    audit = sub.add_parser("audit", help="verify bundles and node databases offline; exit 1 on findings")
    audit.add_argument("paths", nargs="+", metavar="PATH",
                       help="bundle files and/or node databases; a statement file (from settle) among them is "
                            "checked against the audit of the others")
    audit.add_argument("--json", action="store_true", help="print one JSON document")
    audit.add_argument("--jobs", type=int, default=1, metavar="N", help="verify over N processes (default 1)")
    audit.set_defaults(run="node.commands.evidence:cmd_audit")

    settle = sub.add_parser("settle", help="audit, then write a signed statement of who owes whom")
    settle.add_argument("paths", nargs="+", metavar="PATH", help="bundle files and/or node databases")
    settle.add_argument("--key", help="the auditor's key file (default: <data dir>/node.key)")
    settle.add_argument("--out", required=True, help="statement file to write (must not exist unless --force)")
    settle.add_argument("--force", action="store_true", help="replace --out if it exists")
    settle.add_argument("--json", action="store_true", help="print one JSON document")
    settle.add_argument("--jobs", type=int, default=1, metavar="N", help="verify over N processes")
    settle.set_defaults(run="node.commands.evidence:cmd_settle")


def _add_network(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    provide = sub.add_parser("provide", help="run the provider daemon: sell this machine's idle time")
    provide.add_argument("--config", help="the provider's TOML configuration")
    provide.add_argument("--init-config", metavar="PATH", help="write a commented example configuration and exit")
    provide.add_argument("--json", action="store_true", help="print JSON event lines (ready, stopped)")
    provide.add_argument("-v", "--verbose", action="store_true")
    provide.set_defaults(run="node.commands.provide:cmd_provide")

    status = sub.add_parser("status", help="what the local provider daemon is doing")
    status.add_argument("--data-dir", help="the daemon's data directory (default: the usual one)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run="node.commands.provide:cmd_status")

    from node.exitcodes import EXIT_SUANLI, epilog

    run = sub.add_parser("run", help="run a job on the network, like docker run",
                         usage="suanli run [options] -- COMMAND...", epilog=epilog(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.usage_exit, run.one_line = EXIT_SUANLI, True
    run.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                     help="a bootstrap peer (repeatable; default: $SUANLI_BOOTSTRAP, comma-separated)")
    run.add_argument("--image", help="image id, pinned: sha256:<64 hex>")
    run.add_argument("--image-archive", metavar="FILE", help="a docker save archive to ship if the provider lacks it")
    run.add_argument("--gpus", type=int, default=0, metavar="N", help="whole GPUs (default 0)")
    run.add_argument("--gpu-model", metavar="NAME", help="GPU model as NVML names it")
    run.add_argument("--gpu-memory", type=int, metavar="MIB", help="minimum GPU memory per GPU")
    run.add_argument("--cpus", type=float, default=1.0, metavar="N", help="CPU cores (default 1)")
    run.add_argument("--memory", default="512m", metavar="SIZE", help="memory, e.g. 512m, 1.5g (default 512m)")
    run.add_argument("--disk", default="1g", metavar="SIZE",
                     help="the job's writable /io, a filesystem of this size, e.g. 256m, 20g (default 1g)")
    run.add_argument("--max-price", type=int, default=10_000, metavar="MICROS_PER_S",
                     help="most micro-credits per second you pay (default 10000)")
    run.add_argument("--max-duration", type=int, default=600, metavar="SECONDS", help="longest run (default 600)")
    run.add_argument("--max-exposure", type=int, metavar="MICROS",
                     help="the most a provider may claim that you have not countersigned: offers whose exposure "
                          "cap is higher are refused (default: max_exposure_micros in <data dir>/buyer.toml, "
                          "else 100000)")
    run.add_argument("--input", metavar="DIR", help="directory whose files appear in /io/in")
    run.add_argument("--output", metavar="DIR", help="directory that receives /io/out; must be new or empty "
                     "(unless --force); symlinks in it are never followed")
    run.add_argument("--force", action="store_true", help="let outputs replace files of the same name in --output")
    run.add_argument("--on-preempt", choices=("fail", "retry"), default="fail",
                     help="when a provider's owner takes the machine back: fail (exit 124), or retry the job on "
                          "another provider (at most twice; the preempted run stays billed to the second)")
    run.add_argument("--preemptible", action="store_true",
                     help="let the job run past the end of a provider's selling window, knowing its owner may "
                          "take the machine back (billed to the second; without it the duration is cut there)")
    run.add_argument("--env", action="append", metavar="K=V",
                     help="environment variable (repeatable); the provider sees its value, and it is kept in "
                     "both sides' evidence (the signed proposal): pass no secret you would not give the provider")
    run.add_argument("--wait", type=float, default=3.0, metavar="SECONDS", help="time to collect offers (default 3)")
    run.add_argument("--candidates", type=int, default=5, metavar="N",
                     help="how many providers to try, best first (default 5)")
    run.add_argument("--negotiate-timeout", type=float, default=10.0, metavar="SECONDS",
                     help="how long one provider may take to answer (default 10)")
    run.add_argument("--data-dir", help="where the buyer keeps its key and database")
    run.add_argument("--key", help="the buyer's key file, which must exist (default: <data dir>/node.key, "
                     "created when missing)")
    run.add_argument("--local", action="store_true", help="listen on 127.0.0.1 only")
    run.add_argument("--agent", metavar="SOCKET", help="hand the job to this resident buyer agent (suanli agent); "
                     "default: <data dir>/agent.sock when an agent is running there")
    run.add_argument("--no-agent", action="store_true", help="join the network from this process, agent or not")
    run.add_argument("--show-receipts", action="store_true", help="print each receipt as it is co-signed")
    run.add_argument("--dry-run", action="store_true", help="show the candidates and the proposal; run nothing")
    run.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    run.set_defaults(run="node.commands.run:cmd_run")

    agent = sub.add_parser("agent", help="run the resident buyer agent: `suanli run` starts jobs through it at once")
    agent.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                       help="a bootstrap peer (repeatable; default: $SUANLI_BOOTSTRAP, comma-separated)")
    agent.add_argument("--data-dir", help="where the buyer keeps its key, database and agent.sock")
    agent.add_argument("--local", action="store_true", help="listen on 127.0.0.1 only")
    agent.add_argument("--json", action="store_true", help="print JSON event lines (ready, stopped)")
    agent.add_argument("--dashboard-port", type=int, default=8743, metavar="PORT",
                       help="the buyer's dashboard on 127.0.0.1 (default 8743; 0: any free port; -1: none)")
    agent.add_argument("-v", "--verbose", action="store_true")
    agent.set_defaults(run="node.commands.agent:cmd_agent")

    offers = sub.add_parser("offers", help="list the offers a buyer sees on the network")
    offers.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="a bootstrap peer (repeatable)")
    offers.add_argument("--wait", type=float, default=3.0, metavar="SECONDS", help="time to collect offers")
    offers.add_argument("--image", metavar="IMAGE",
                        help="only offers whose provider holds this image (sha256:<id> or REGISTRY/REPO@sha256:...)")
    offers.add_argument("--json", action="store_true")
    offers.add_argument("--local", action="store_true", help="listen on 127.0.0.1 only")
    offers.add_argument("-v", "--verbose", action="store_true")
    offers.set_defaults(run="node.commands.network:cmd_offers")

    boot = sub.add_parser("bootstrap", help="run a bootstrap node: a stable entry point to the network")
    boot.add_argument("--key", required=True, help="the node's key file (fixed identity)")
    boot.add_argument("--listen", action="append", metavar="MULTIADDR",
                      help="listen address (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    boot.add_argument("--peer", action="append", metavar="MULTIADDR", help="other bootstrap nodes to join")
    boot.add_argument("--json", action="store_true", help="print JSON status lines")
    relay_limits.add_flags(boot)
    boot.add_argument("-v", "--verbose", action="store_true")
    boot.set_defaults(run="node.commands.network:cmd_bootstrap")

    demo = sub.add_parser("demo", help="a local network, one real job in Docker, co-signed receipts, the audit",
                          usage="suanli demo [--providers N] [--image busybox|python] [--json] [-- COMMAND...]")
    demo.add_argument("--providers", type=_providers, default=2, metavar="N",
                      help=f"provider processes, 1 to {MAX_DEMO_PROVIDERS} (default 2)")
    demo.add_argument("--image", choices=("busybox", "python"), default="busybox",
                      help="python: examples/wordstats in the Debian python3 image (sandbox.pyimage)")
    demo.add_argument("--json", action="store_true", help="print one JSON summary")
    demo.add_argument("--clean", action="store_true", help="delete the demo's files when it succeeds")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.add_argument("command", nargs=argparse.REMAINDER, help="-- then a command to run instead of the default")
    demo.set_defaults(run="node.commands.demo:cmd_demo")


MAX_DEMO_PROVIDERS = 8


def _providers(text: str) -> int:
    """``demo --providers``: a whole number of providers the demo can start (at least one runs the job)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= MAX_DEMO_PROVIDERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_DEMO_PROVIDERS}, got {n}")
    return n


def _add_machine(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    image = sub.add_parser("image", help="build, inspect or load images without a registry")
    isub = image.add_subparsers(dest="image_cmd", required=True, metavar="{build-demo,inspect,load}")
    build = isub.add_parser("build-demo", help="build and load the busybox demo image; print its pinned id")
    build.add_argument("--busybox", help="path of a static busybox (default /bin/busybox)")
    build.set_defaults(run="node.commands.machine:cmd_image_build_demo")
    inspect = isub.add_parser("inspect", help="print an image archive's digests (its pinned ids)")
    inspect.add_argument("archive")
    inspect.set_defaults(run="node.commands.machine:cmd_image_inspect")
    load = isub.add_parser("load", help="load a docker save archive after checking its digests")
    load.add_argument("archive")
    load.add_argument("--sha256", help="the archive's expected sha256 (default: as computed)")
    load.add_argument("--id", help="the expected image id (default: the archive's config digest)")
    load.set_defaults(run="node.commands.machine:cmd_image_load")
    gpus = sub.add_parser("gpus", help="the GPUs this machine can offer (NVML)")
    gpus.add_argument("--json", action="store_true")
    gpus.set_defaults(run="node.commands.machine:cmd_gpus")


def _add_history(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """A buyer's history (node.commands.history), read from ``<data dir>/buyer.db`` and its stored logs."""
    jobs = sub.add_parser("jobs", help="the jobs this buyer ran: agreement, provider, image, billed, amount, exit")
    jobs.add_argument("--data-dir", help="the buyer's data directory (default: the usual one)")
    jobs.add_argument("--json", action="store_true", help="print one JSON document")
    jobs.set_defaults(run="node.commands.history:cmd_jobs")
    logs = sub.add_parser("logs", help="a job's output as this buyer received it")
    logs.add_argument("agreement", metavar="AGREEMENT_ID", help="agreement id (hex; a unique prefix is enough)")
    logs.add_argument("--data-dir", help="the buyer's data directory (default: the usual one)")
    logs.set_defaults(run="node.commands.history:cmd_logs")
    receipts = sub.add_parser("receipts", help="a job's receipts and the audit verdict of its chain")
    receipts.add_argument("agreement", metavar="AGREEMENT_ID", help="agreement id (hex; a unique prefix is enough)")
    receipts.add_argument("--data-dir", help="the buyer's data directory (default: the usual one)")
    receipts.add_argument("--json", action="store_true", help="print one JSON document")
    receipts.set_defaults(run="node.commands.history:cmd_receipts")


def _add_service(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``suanli service``: the provider or the agent as a systemd unit (node.commands.service)."""
    service = sub.add_parser("service", help="run the provider (or the buyer agent) as a systemd service")
    ssub = service.add_subparsers(dest="service_cmd", required=True, metavar="{install,uninstall,status}")
    for name, text in (("install", "write the unit (restart on failure, sandboxed, logs to the journal) and "
                                    "start it where systemd runs"),
                       ("uninstall", "stop, disable and remove the unit"),
                       ("status", "is the unit installed, running")):
        cmd = ssub.add_parser(name, help=text)
        cmd.add_argument("--user", action="store_true", help="a user unit (systemctl --user) instead of a system one")
        cmd.add_argument("--role", choices=("provide", "agent"), default="provide",
                         help="provide: the provider daemon (default); agent: the resident buyer agent")
        cmd.add_argument("--unit-dir", metavar="DIR",
                         help="write the unit here instead of systemd's directory (default: $SUANLI_UNIT_DIR)")
        cmd.set_defaults(run=f"node.commands.service:cmd_{name}")
        if name == "install":
            cmd.add_argument("--config", help="the provider's TOML configuration (--role provide)")
            cmd.add_argument("--data-dir", help="the agent's data directory (--role agent)")
            cmd.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                             help="the agent's bootstrap peers (default: $SUANLI_BOOTSTRAP)")
            cmd.add_argument("--print", action="store_true", help="print the unit and write nothing")


def _add_dashboard(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dash = sub.add_parser("dashboard", help="print the local provider's dashboard URL (with its token) and open it")
    dash.add_argument("--data-dir", help="the provider's data directory (default: the usual one)")
    dash.add_argument("--config", help="the provider's configuration (its data_dir is used)")
    dash.add_argument("--no-open", action="store_true", help="print the URL only, open no browser")
    dash.add_argument("--agent", action="store_true",
                      help="the buyer agent's dashboard (suanli agent) instead of the provider's")
    dash.set_defaults(run="node.commands.dashboard:cmd_dashboard")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="suanli",
        description="Suanli: a peer-to-peer market for idle compute. Sell idle GPU/CPU time by the second; "
                    "buy it with signed, per-second receipts that anyone can audit offline.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_keys(sub)
    _add_evidence(sub)
    _add_network(sub)
    _add_machine(sub)
    _add_history(sub)
    _add_service(sub)
    _add_dashboard(sub)
    return parser


def _resolve(target: str):  # type: ignore[no-untyped-def]
    module_name, func = target.split(":")
    module = __import__(module_name, fromlist=[func])
    return getattr(module, func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        code: int = _resolve(args.run)(args)
    except BrokenPipeError:
        # A reader that stopped early (``suanli offers | head``): end quietly, as for ``status``. Point
        # stdout at /dev/null so that the interpreter's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except SuanliError as exc:
        print(f"suanli: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("suanli: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
