"""What the provider daemon hands each job (node.provider -> node.provider_job): the confirmed agreement
with its capacity and stop switch (``ActiveJob``), and the services a job runs on (``JobServices``).

Rule 1: a stop has one reason, the first asked for, whoever asks (the daemon at shutdown, the buyer, the
exposure guard, the engine); the job's session hears every request (``on_stop``) and keeps the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from market.capacity import Allocation
from p2p.envelope import Signed
from p2p.identity import NodeKey
from p2p.market_records import Agreement, Proposal
from p2p.receipt_records import Receipt
from sandbox.engine import Engine
from sandbox.spec import EngineFacts, GpuInfo, ProviderPolicy
from settlement.astore import AsyncStore

if TYPE_CHECKING:
    from node.jobimages import ProviderImages


@dataclass
class ActiveJob:
    """An agreement the provider has confirmed, from countersignature to final receipt."""

    agreement: Signed[Agreement]
    proposal: Signed[Proposal]
    allocation: Allocation
    started: bool = False
    phase: str = "agreed"
    metered_ms: int = 0
    amount_micros: int = 0
    cosigned_micros: int = 0
    stop_reason: str | None = None
    stop_requested: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    on_stop: Callable[[str], object] = field(default=lambda reason: None, repr=False, compare=False)  # the session
    on_owner: Callable[[str], object] = field(default=lambda kind: None, repr=False, compare=False)  # node.owner_watch
    cpu_usage_file: str | None = None  # its container's cgroup CPU counter (node.owner_signals Rule 3)
    image_id: str | None = None  # the image it runs, once known (a registry image's, before its pull)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.on_stop(self.stop_reason)
        self.stop_requested.set()


@dataclass
class JobServices:
    """What running a job needs from the daemon."""

    key: NodeKey
    store: AsyncStore
    engine: Engine
    facts: EngineFacts
    policy: ProviderPolicy
    gpus: dict[str, GpuInfo]
    node_id: str
    active: dict[bytes, ActiveJob]
    on_finished: Callable[[ActiveJob, Receipt | None, bool], None]  # (job, final receipt, final countersigned)
    image_dir: Path | None = None  # uploads, clean copies and the buyer image ledger (None: a temporary folder)
    images: ProviderImages | None = None  # registry pulls, the image cache, the layer store (None: none of them)

    def images_in_use(self) -> frozenset[str]:
        """The images running or agreed jobs use: their agreed names and, once known, their ids."""
        jobs = self.active.values()
        return frozenset(j.agreement.record.job.image for j in jobs) | {j.image_id for j in jobs if j.image_id}
