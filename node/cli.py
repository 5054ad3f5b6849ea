"""The ``suanli`` command line: one entry point for operators, buyers, bootstrap hosts and auditors.

Rule 1: offline commands (``keys``, ``export``, ``audit``, ``settle``, ``--help``) never import
libp2p (an import costs about a second); each subcommand imports what it needs when it runs.
Rule 2: a mistake of the user's is one line on stderr and a non-zero exit, never a traceback.
Exit codes: 0 success; 1 the audit found problems; 2 unusable input or a usage/config error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2p.errors import SuanliError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_UNUSABLE = 2


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
    export.add_argument("--out", required=True, help="bundle file to write")
    export.set_defaults(run="node.commands.evidence:cmd_export")

    audit = sub.add_parser("audit", help="verify bundles and node databases offline; exit 1 on findings")
    audit.add_argument("paths", nargs="+", metavar="PATH", help="bundle files and/or node databases")
    audit.add_argument("--json", action="store_true", help="print one JSON document")
    audit.add_argument("--jobs", type=int, default=1, metavar="N", help="verify over N processes (default 1)")
    audit.set_defaults(run="node.commands.evidence:cmd_audit")

    settle = sub.add_parser("settle", help="audit, then write a signed statement of who owes whom")
    settle.add_argument("paths", nargs="+", metavar="PATH", help="bundle files and/or node databases")
    settle.add_argument("--key", help="the auditor's key file (default: <data dir>/node.key)")
    settle.add_argument("--out", required=True, help="statement file to write")
    settle.add_argument("--json", action="store_true", help="print one JSON document")
    settle.add_argument("--jobs", type=int, default=1, metavar="N", help="verify over N processes")
    settle.set_defaults(run="node.commands.evidence:cmd_settle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="suanli",
        description="Suanli: a peer-to-peer market for idle compute. Sell idle GPU/CPU time by the second; "
                    "buy it with signed, per-second receipts that anyone can audit offline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_keys(sub)
    _add_evidence(sub)
    return parser


def _resolve(target: str):  # type: ignore[no-untyped-def]
    module_name, func = target.split(":")
    module = __import__(module_name, fromlist=[func])
    return getattr(module, func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = _resolve(args.run)(args)
    except SuanliError as exc:
        print(f"suanli: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("suanli: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
