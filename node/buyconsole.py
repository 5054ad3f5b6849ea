"""Where one buyer's run reports (node.buyer Rule 1): notes on stderr, the job's own output, and one
JSON-able summary; ``quiet`` (--json) keeps only the summary. ``Collected`` keeps everything for Python
callers of ``node.buyer.run_once``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2p.envelope import Signed
    from p2p.receipt_records import Receipt


class Console:
    """Rule 1, on this process's terminal. The resident agent (node.agent) sends the same calls to the
    ``suanli run`` that asked for the job; ``Collected`` keeps them for a Python caller."""

    def __init__(self, quiet: bool, *, show_receipts: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet  # --json: no notes, no job output, only the final document
        self.show_receipts = show_receipts
        self.verbose = verbose

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def log(self, stream: str, data: bytes) -> None:
        if self.quiet:
            return
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data + b"\n")
        out.flush()

    def result(self, doc: dict[str, Any], indent: int | None = None) -> None:
        print(json.dumps(doc, indent=indent), flush=True)

    def receipt(self, receipt: Signed[Receipt]) -> None:
        """A receipt this buyer has just countersigned (and stored)."""
        r = receipt.record
        if self.show_receipts:
            self.say(f"suanli: receipt {r.seq} co-signed: {r.metered_ms / 1000:.1f} s, {r.amount_micros} "
                     "micro-credits" + (f" (final: {r.reason})" if r.state == "final" else ""))


class Collected(Console):
    """A console that prints nothing and keeps everything: ``notes``, ``logs`` ((stream, line) pairs),
    the countersigned ``receipts`` in order, and the summary ``document`` (Python callers of ``run_once``)."""

    def __init__(self, *, verbose: bool = False) -> None:
        super().__init__(True, show_receipts=False, verbose=verbose)
        self.notes: list[str] = []
        self.logs: list[tuple[str, bytes]] = []
        self.receipts: list[Signed[Receipt]] = []
        self.document: dict[str, Any] = {}

    def say(self, text: str) -> None:
        self.notes.append(text)

    def log(self, stream: str, data: bytes) -> None:
        self.logs.append((stream, data))

    def result(self, doc: dict[str, Any], indent: int | None = None) -> None:
        self.document = doc

    def receipt(self, receipt: Signed[Receipt]) -> None:
        self.receipts.append(receipt)
