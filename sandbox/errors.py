"""The sandbox's errors (pure), in the one tree of p2p.errors: the container engine could not run a job.

sandbox.engine.translate maps the docker SDK's and the OS's exceptions into these, once (p2p.errors
Rule 2). ``p2p.errors`` still answers for these names.
"""

from __future__ import annotations

from p2p.errors import ENVIRONMENT, PEER, SuanliError


class SandboxError(SuanliError):
    """The container engine could not run a job as planned."""

    fault = ENVIRONMENT


class ImageError(SandboxError):
    """An image is missing, not pinned by digest, does not match its digest, or is refused by policy:
    most often the buyer's archive (PEER); an ImageError about this machine's own images says
    ``fault=ENVIRONMENT``."""

    fault = PEER


class GpuUnavailableError(SandboxError):
    """A GPU job cannot run on this machine; the message says why."""

    fault = ENVIRONMENT
