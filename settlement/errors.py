"""The store's error (pure), in the one tree of p2p.errors: the node's database refused an operation.

settlement.store maps sqlite's exceptions into it, once (p2p.errors Rule 2). ``p2p.errors`` still
answers for the name.
"""

from __future__ import annotations

from p2p.errors import ENVIRONMENT, SuanliError


class StoreError(SuanliError):
    """The node's database refused an operation."""

    fault = ENVIRONMENT
