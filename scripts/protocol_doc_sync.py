"""Rewrite the generated parts of docs/PROTOCOL.md from the code: the record field tables, the test
vectors, their field values, the negative vectors and the message vectors. Run it after a record changes (and bump that
record's version: the golden hashes in tests/p2p/test_records.py are then updated by hand, on purpose).

    .venv/bin/python scripts/protocol_doc_sync.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from node.wire_vectors import message_vectors
from settlement.testing import negative_vectors, protocol_vectors, vector_fields

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def main() -> int:
    text = DOC.read_text()
    tables = subprocess.run([sys.executable, str(Path(__file__).with_name("protocol_tables.py"))],
                            capture_output=True, text=True, check=True).stdout
    for block in re.split(r"(?m)^(?=### )", tables.split("\n## Test vectors")[0]):
        heading = block.split("\n", 1)[0]
        if not heading.startswith("### "):
            continue
        name = heading.split(" (")[0]
        pattern = re.compile(rf"(?ms)^{re.escape(name)} \(.*?(?=^##)")
        if not pattern.search(text):
            print(f"protocol_doc_sync: {name} is not in {DOC.name}; add it by hand", file=sys.stderr)
            continue
        text = pattern.sub(lambda _m, b=block: b.rstrip("\n") + "\n\n", text, count=1)
    for name, value in {**protocol_vectors(), **negative_vectors(), **message_vectors()}.items():
        text = re.sub(rf"(?m)^{re.escape(name)}: [0-9a-f]+$", f"{name}: {value.hex()}", text)
    text = re.sub(r"(?s)(### Field values of the vectors\n.*?```text\n).*?(\n```)",
                  lambda m: m.group(1) + vector_fields() + m.group(2), text, count=1)
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
