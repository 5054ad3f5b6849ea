"""The one error tree of Suanli. Every error the project raises on purpose is a SuanliError.

    SuanliError
    ├── LocalProtocolError        we tried something illegal (a bug on our side)
    ├── RemoteProtocolError       a peer or an input file broke the rules: drop it, lower its score
    │   ├── CodecError            bytes that are not one canonical record (garbage, oversize, wrong tag)
    │   └── SignatureError        a signature that does not verify, or a signer that is not who it must be
    ├── PeerUnreachableError      no connection or stream could be made to a peer (not its fault)
    ├── ConfigError               an operator's configuration is wrong (names the key and the problem)
    ├── KeyFileError              a key file is missing, malformed, or readable by others
    ├── UnusableInputError        a file given to an offline command cannot be used at all
    ├── StoreError                the node's database refused an operation (a rule of the store)
    └── SandboxError              the container engine could not run a job as planned
        ├── ImageError            an image is missing, unpinned, mismatched or refused by policy
        └── GpuUnavailableError   a GPU job cannot run here (no NVIDIA runtime, old toolkit, ...)

Errors carry structured fields (``peer``, ``agreement_id``, ``expected``, ``actual``) so that callers
and logs need not parse messages. Foreign exceptions are translated once, at the boundary that meets
them, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class SuanliError(Exception):
    """Root of every error Suanli raises on purpose."""

    def __init__(self, message: str, /, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LocalProtocolError(SuanliError):
    """We tried to do something the protocol forbids: a bug on our side."""


class RemoteProtocolError(SuanliError):
    """The other side (a peer, or a file from somewhere else) broke the rules."""


class CodecError(RemoteProtocolError):
    """Bytes that do not decode to exactly one canonical record of the expected type."""


class SignatureError(RemoteProtocolError):
    """A signature does not verify, or was made by a key that has no right to sign it."""


class PeerUnreachableError(SuanliError):
    """No connection or stream could be made to a peer (fields: ``peer``, ``addr``, ``attempts``).

    Not a protocol violation: the peer may be down, behind NAT, or the address may be stale.
    """


class ConfigError(SuanliError):
    """An operator's configuration is wrong; the message names the key and the problem."""


class KeyFileError(SuanliError):
    """A key file is missing, malformed, or readable by group or others."""


class UnusableInputError(SuanliError):
    """An input file cannot be used at all (missing, truncated, not what it claims to be)."""


class StoreError(SuanliError):
    """The node's database refused an operation."""


class SandboxError(SuanliError):
    """The container engine could not run a job as planned."""


class ImageError(SandboxError):
    """An image is missing, not pinned by digest, does not match its digest, or is refused by policy."""


class GpuUnavailableError(SandboxError):
    """A GPU job cannot run on this machine; the message says why."""
