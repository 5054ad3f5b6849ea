"""The market's signed records: Offer (provider), Proposal (buyer), Agreement (provider, then buyer).

Money is integer micro-credits, time integer milliseconds (or seconds where a name says ``_s``),
memory MiB, CPU in millicores. No floats anywhere (p2p.codec refuses them). The exact bytes of each
record are in docs/PROTOCOL.md.

Rule 1: an Agreement is the root of a receipt chain; its id is the SHA-256 of its canonical body, and
it is binding once the buyer has countersigned the provider's signature (a firm bid before that,
valid until ``accept_by_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from p2p.records import U64, Digest, MaxLen, PublicKey, Record, ShortText, Size, record, struct

# A pinned local image id ``sha256:<64 hex>``, or a registry image pinned by digest
# ``REGISTRY/REPO@sha256:<64 hex>`` (sandbox.registry); never a tag.
ImageRef = Annotated[str, MaxLen(256)]
MAX_OFFER_IMAGES = 32  # digests an offer advertises (issue 19): the most recently used first
DEFAULT_DISK_MIB = 1024  # a job's /io when the buyer names no size
Command = Annotated[tuple[Annotated[str, MaxLen(4096)], ...], MaxLen(256)]


@struct
@dataclass(frozen=True)
class GpuSpec:
    """One GPU as the provider advertises it (from NVML; a buyer should verify before trusting)."""

    model: ShortText
    memory_mib: U64
    compute_capability: ShortText
    driver_version: ShortText
    cuda_version: ShortText


@struct
@dataclass(frozen=True)
class Capacity:
    """Resources: the machine's total on an offer, or what is free right now."""

    gpus: Annotated[tuple[GpuSpec, ...], MaxLen(64)]
    cpu_millis: U64
    memory_mib: U64
    disk_mib: U64 = 0  # scratch disk for jobs' /io (a size-limited filesystem each, docs/SANDBOX.md)


@struct
@dataclass(frozen=True)
class Prices:
    """Micro-credits per second per unit: per GPU by model name, per CPU core, per GiB of memory."""

    gpu_micros_per_s: Annotated[dict[str, U64], MaxLen(64)]
    cpu_core_micros_per_s: U64
    memory_gib_micros_per_s: U64


@struct
@dataclass(frozen=True)
class Limits:
    max_duration_s: U64
    max_concurrent_jobs: U64
    allowed_images: Annotated[tuple[ImageRef, ...], MaxLen(256)]  # empty: any image (pinned by digest)


@struct
@dataclass(frozen=True)
class ReceiptTerms:
    """How receipts flow: every ``interval_ms`` a receipt; the provider pauses the job when the buyer's
    countersignature is ``countersign_timeout_ms`` late and stops it ``grace_ms`` later; it never runs
    more than ``exposure_cap_micros`` ahead of the buyer's last countersigned amount."""

    interval_ms: U64
    countersign_timeout_ms: U64
    grace_ms: U64
    exposure_cap_micros: U64


@record("offer", 2)
@dataclass(frozen=True)
class Offer(Record):
    """Version 2 (issues 18 and 19) added availability (``window_end_ms``, ``notice_ms``, ``preemptible``)
    and ``images``, the digests of the images the provider holds, so a buyer can prefer one that need not
    pull or receive its image."""

    SIGNERS: ClassVar = (("provider", "provider"),)

    provider: PublicKey
    addrs: Annotated[tuple[Annotated[str, MaxLen(512)], ...], MaxLen(16)]
    seq: U64
    created_at_ms: U64
    expires_at_ms: U64
    capacity: Capacity
    free: Capacity
    prices: Prices
    limits: Limits
    terms: ReceiptTerms
    images: Annotated[tuple[Digest, ...], MaxLen(MAX_OFFER_IMAGES)] = ()  # image ids and manifest digests held
    window_end_ms: U64 = 0  # when the owner's schedule ends this selling window; 0: no scheduled end
    notice_ms: U64 = 0  # the notice a running job gets when the owner returns (docs/OWNER.md)
    preemptible: bool = False  # True when the owner may take the machine back before a job ends


@struct
@dataclass(frozen=True)
class JobSpec:
    """What runs: an image pinned by id (``sha256:<64 hex>``) or a registry image pinned by its manifest
    digest (``REGISTRY/REPO@sha256:<64 hex>``), never a tag."""

    image: ImageRef
    image_archive_sha256: Digest | None
    command: Command
    env: Annotated[dict[str, Annotated[str, MaxLen(4096)]], MaxLen(128)]
    input_sha256: Digest | None


@struct
@dataclass(frozen=True)
class ResourceRequest:
    """What a job needs. GPUs are whole devices: a model name, or a minimum memory and compute capability
    (``"8.6"``); CPU in millicores, memory in MiB; ``disk_mib`` is the size of the job's writable /io, a
    filesystem of its own whose limit the kernel enforces (the job gets ENOSPC, never the host)."""

    gpus: U64
    gpu_model: ShortText | None
    min_gpu_memory_mib: U64
    min_compute_capability: ShortText | None
    cpu_millis: U64
    memory_mib: U64
    disk_mib: U64 = DEFAULT_DISK_MIB  # a buyer sets it with `suanli run --disk SIZE`


@record("proposal", 2)
@dataclass(frozen=True)
class Proposal(Record):
    """Version 2 (issue 18) added ``accepts_preemption``: the buyer lets the job run past the end of the
    provider's selling window (``Offer.window_end_ms``), knowing the owner may take the machine back;
    without it the provider caps the agreed duration at the window's end (market.deal Rule 7)."""

    SIGNERS: ClassVar = (("buyer", "buyer"),)

    buyer: PublicKey
    provider: PublicKey
    offer_id: Digest
    job: JobSpec
    resources: ResourceRequest
    max_price_micros_per_s: U64
    max_duration_ms: U64
    terms: ReceiptTerms
    nonce: Annotated[bytes, Size(16)]
    created_at_ms: U64
    expires_at_ms: U64
    accepts_preemption: bool = False


@record("agreement", 2)
@dataclass(frozen=True)
class Agreement(Record):
    """Version 2 (issue 19) added ``image_manifest`` and ``image_platform``: for a registry image, the
    manifest the provider will pull (the platform's, when the buyer named a multi-platform index) and
    that platform ("linux/amd64"); both None for a local image id."""

    SIGNERS: ClassVar = (("provider", "provider"), ("buyer", "buyer"))

    provider: PublicKey
    buyer: PublicKey
    offer_id: Digest
    proposal_id: Digest
    job: JobSpec
    resources: ResourceRequest
    price_micros_per_s: U64
    max_duration_ms: U64
    terms: ReceiptTerms
    created_at_ms: U64
    accept_by_ms: U64
    image_manifest: Digest | None = None
    image_platform: ShortText | None = None
