"""Print the record field tables and test vectors of docs/PROTOCOL.md from the code itself.

    .venv/bin/python scripts/protocol_tables.py > /tmp/tables.md   # then paste over the generated part
"""

from __future__ import annotations

import dataclasses
import typing

from p2p.market_records import (
    Agreement,
    Capacity,
    GpuSpec,
    JobSpec,
    Limits,
    Offer,
    Prices,
    Proposal,
    ReceiptTerms,
    ResourceRequest,
)
from p2p.receipt_records import Receipt, Statement, StatementEntry, Usage
from p2p.records import MaxLen, Range, Size
from settlement.testing import protocol_vectors


def describe(tp: typing.Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(tp)
        text = describe(base)
        for m in marks:
            if isinstance(m, Size):
                text += f" ({m.n} bytes)"
            elif isinstance(m, MaxLen):
                text += f" (at most {m.n})"
            elif isinstance(m, Range):
                text += " (0 .. 2^64-1)" if m.lo == 0 else " (signed 64-bit)"
        return text
    if origin in (typing.Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return describe(args[0]) + " or nil"
    if origin is tuple:
        return f"array of {describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"map text -> {describe(typing.get_args(tp)[1])}"
    return {int: "int", str: "text", bytes: "bin", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def table(cls: type) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    tag = getattr(cls, "TAG", None)
    head = f"### {cls.__name__}" + (f" (`\"t\": \"{tag}\"`, `\"v\": {cls.VERSION}`)" if tag else " (nested map)")
    print(head)
    signers = getattr(cls, "SIGNERS", None)
    if signers:
        print("\nSigned by, in order: " + ", ".join(f"{role} (key in `{field}`, domain "
                                                   f"`suanli/{tag}/{cls.VERSION}/{role}`)" for role, field in signers)
              + ".")
    print("\n| key | type |\n|---|---|")
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name):
        print(f"| `{f.name}` | {describe(hints[f.name])} |")
    print()


for c in (Offer, Capacity, GpuSpec, Prices, Limits, ReceiptTerms, Proposal, JobSpec, ResourceRequest, Agreement,
          Receipt, Usage, Statement, StatementEntry):
    table(c)

print("## Test vectors\n\nKeys: seed = SHA-256 of the UTF-8 label (`provider`, `buyer`, `auditor`). Each line is"
      " `name: hex`; `tests/p2p/test_records.py` checks every line against the code.\n\n```text")
for name, value in protocol_vectors().items():
    print(f"{name}: {value.hex()}")
print("```")
