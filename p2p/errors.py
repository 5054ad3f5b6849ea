"""The one error tree of Suanli. Every error the project raises on purpose is a SuanliError.

Each error says whose fault it was (``fault``), as h11 splits LocalProtocolError from
RemoteProtocolError and trio ClosedResourceError from BrokenResourceError:

- ``PEER``: the other side (a peer, or a file or archive it sent) broke the rules: drop it, lower its
  score, record it against it;
- ``LOCAL``: we did something the protocol or our own code forbids: a bug, never the peer's doing;
- ``ENVIRONMENT``: neither: the network, the machine, the container engine, the database or the
  operator's configuration and files. Retry, report, or ask the operator to fix it.

    SuanliError                   (LOCAL unless a subclass says otherwise)
    ├── LocalProtocolError        LOCAL: we tried something illegal (a bug on our side)
    ├── RemoteProtocolError       PEER: a peer or an input file broke the rules
    │   ├── CodecError            PEER: bytes that are not one canonical record (garbage, oversize, wrong tag)
    │   ├── SignatureError        PEER: a signature that does not verify, or a signer that is not who it must be
    │   └── StreamBrokenError     ENVIRONMENT: the stream was reset or its connection lost (p2p.framing); a
    │                             RemoteProtocolError still, so every handler that drops the stream does
    ├── PeerUnreachableError      ENVIRONMENT: no connection or stream could be made to a peer
    ├── ConfigError               ENVIRONMENT: an operator's configuration is wrong (names the key and the problem)
    ├── KeyFileError              ENVIRONMENT: a key file is missing, malformed, or readable by others
    ├── UnusableInputError        ENVIRONMENT: a file given to an offline command cannot be used at all
    ├── StoreError                ENVIRONMENT: the node's database refused an operation (settlement.errors)
    └── SandboxError              ENVIRONMENT: the container engine could not run a job (sandbox.errors)
        ├── ImageError            PEER: the buyer's image is unpinned, mismatched, malformed or refused
        └── GpuUnavailableError   ENVIRONMENT: a GPU job cannot run here (no NVIDIA runtime, old toolkit, ...)

Rule 1: the classes of the store and the sandbox live with their owners (settlement.errors,
sandbox.errors); this module still answers for their names (a lazy re-export: nothing here imports
a package above p2p).
Rule 2: foreign exceptions (libp2p, docker, sqlite, OS) are translated once, at the boundary that meets
them (p2p.framing, sandbox.engine.translate, settlement.store), with ``raise ... from exc``, into the
class whose ``fault`` is right; callers read ``fault`` (or ``fault_of``) instead of re-interpreting.
A single error may say otherwise than its class (``SuanliError(msg, fault=PEER)``).

Errors carry structured fields (``peer``, ``agreement_id``, ``expected``, ``actual``) so that callers
and logs need not parse messages.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

PEER, LOCAL, ENVIRONMENT = "peer", "local", "environment"
FAULTS = (PEER, LOCAL, ENVIRONMENT)


class SuanliError(Exception):
    """Root of every error Suanli raises on purpose."""

    fault: ClassVar[str] = LOCAL

    def __init__(self, message: str, /, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fault_of(exc: BaseException) -> str:
    """Whose fault ``exc`` was: its own ``fault``, or LOCAL for an exception no boundary translated
    (a foreign exception reaching our code is our bug: Rule 2)."""
    fault = getattr(exc, "fault", None) if isinstance(exc, SuanliError) else None
    return fault if fault in FAULTS else LOCAL


class LocalProtocolError(SuanliError):
    """We tried to do something the protocol forbids: a bug on our side."""


class RemoteProtocolError(SuanliError):
    """The other side (a peer, or a file from somewhere else) broke the rules."""

    fault = PEER


class CodecError(RemoteProtocolError):
    """Bytes that do not decode to exactly one canonical record of the expected type."""


class SignatureError(RemoteProtocolError):
    """A signature does not verify, or was made by a key that has no right to sign it."""


class StreamBrokenError(RemoteProtocolError):
    """The stream was reset, or its connection broke, while we read, wrote or closed it (fields:
    ``peer``; ``reason="reset"`` for a reset). Not proven a rule break: the peer may have crashed or
    the network failed, hence ENVIRONMENT; still a RemoteProtocolError, so every handler that drops
    the stream on one keeps doing so."""

    fault = ENVIRONMENT


class PeerUnreachableError(SuanliError):
    """No connection or stream could be made to a peer (fields: ``peer``, ``addr``, ``attempts``).

    Not a protocol violation: the peer may be down, behind NAT, or the address may be stale.
    """

    fault = ENVIRONMENT


class ConfigError(SuanliError):
    """An operator's configuration is wrong; the message names the key and the problem."""

    fault = ENVIRONMENT


class KeyFileError(SuanliError):
    """A key file is missing, malformed, or readable by group or others."""

    fault = ENVIRONMENT


class UnusableInputError(SuanliError):
    """An input file cannot be used at all (missing, truncated, not what it claims to be)."""

    fault = ENVIRONMENT


def leaves(exc: BaseException) -> list[BaseException]:
    """The real exceptions inside (possibly nested) exception groups, in order; ``[exc]`` for one."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# Rule 1: moved to their owners, still importable from here.
_MOVED = {"StoreError": "settlement.errors", "SandboxError": "sandbox.errors", "ImageError": "sandbox.errors",
          "GpuUnavailableError": "sandbox.errors"}


def __getattr__(name: str) -> Any:
    owner = _MOVED.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(owner), name)
