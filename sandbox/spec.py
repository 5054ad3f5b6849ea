"""What the planner is given: a job spec, the provider's policy, the engine's facts (pure).

The market's agreement records are converted into a `SandboxJob` by the layer above; nothing here knows
about signatures or the network. Units are in the names (`_ms`, `_mib`, `millicores`).

Rule 1: an image is named only by a pinned id ``sha256:<64 hex>``; a tag or a short id is refused
when the spec is made, so that no later step can resolve a name the buyer did not agree to.
Rule 2: every resource is an integer; no float ever reaches a container plan or a receipt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

from p2p.errors import ConfigError
from sandbox.errors import ImageError

ImageId = NewType("ImageId", str)

_PINNED = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Labels that tie every container and volume to this node and an agreement (the reaper's key).
LABEL_NODE = "suanli.node"
LABEL_AGREEMENT = "suanli.agreement"
LABEL_ROLE = "suanli.role"
# The daemon that owns a container or volume: its lock file (node.lock); it is alive while that file is
# locked, and then nobody else may remove its objects (reaper Rule 3).
LABEL_OWNER = "suanli.owner"


def pinned_image_id(value: str) -> ImageId:
    """Return `value` if it is a pinned image id (Rule 1); raise ImageError otherwise."""
    if not _PINNED.fullmatch(value):
        raise ImageError("an image must be referenced by its pinned id 'sha256:<64 hex digits>', "
                         "never by a tag or a short id", actual=value)
    return ImageId(value)


@dataclass(frozen=True)
class SandboxJob:
    """One job as agreed: what to run and how much of the machine it may use. Not the wire's
    ``p2p.market_records.JobSpec`` (image, archive digest, command, env): node.jobcontainer builds this from
    the agreement's JobSpec and resources (the two were both called JobSpec until issue 14)."""

    image_id: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cpus_millicores: int = 1000
    memory_mib: int = 256
    gpus: int = 0
    gpu_model: str | None = None
    max_duration_ms: int = 3_600_000
    disk_mib: int = 1024  # the job's /io filesystem (sandbox.disk), when the policy gives jobs disks

    def __post_init__(self) -> None:
        pinned_image_id(self.image_id)
        if not self.command or not all(isinstance(a, str) for a in self.command):
            raise ConfigError("a job's command must be a non-empty tuple of strings",
                              actual=self.command)
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ConfigError("a job's environment variable name is not valid", actual=name)
        for name in ("cpus_millicores", "memory_mib", "max_duration_ms", "disk_mib"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"a job's {name} must be a positive integer", key=name, actual=value)
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigError("a job's gpus must be a non-negative integer", key="gpus", actual=self.gpus)


@dataclass(frozen=True)
class ProviderPolicy:
    """The operator's limits and hardening knobs; defaults are the safe baseline."""

    max_cpus_millicores: int = 2000
    max_memory_mib: int = 4096
    max_gpus: int = 8
    max_duration_ms: int = 24 * 3_600_000
    pids_limit: int = 256
    nofile: int = 1024
    fsize_mib: int = 1024  # RLIMIT_FSIZE: the largest file a job may write (no disk quota on overlay)
    tmpfs_mib: int = 64  # /tmp; tmpfs pages are charged to the job's memory cgroup
    log_max_size_mib: int = 10
    log_max_files: int = 2
    stop_grace_ms: int = 10_000
    output_max_bytes: int = 1 << 30
    oom_score_adj: int = 500  # the host OOM killer prefers the job over the owner's processes
    runtime: str | None = None  # e.g. "runsc" (gVisor); must be registered with the engine
    seccomp_profile_json: str | None = None  # None: Docker's default profile
    allowed_images: frozenset[str] | None = None  # None: any pinned image
    min_toolkit_version: tuple[int, int, int] = (1, 17, 8)  # earlier NVIDIA toolkits: container escapes
    max_disk_mib: int = 64 * 1024
    # Where each job's /io filesystem file lives (sandbox.disk). None: /io is a plain Docker volume with no
    # size limit, for library use only; the provider daemon always sets it (<data dir>/disks).
    disk_dir: str | None = None
    owner_lock: str | None = None  # the daemon's lock file, labelled on everything it creates (LABEL_OWNER)
    log_rate_bytes_per_s: int = 64 * 1024  # a job's log lines beyond this are dropped (node.provider_job)
    log_burst_bytes: int = 256 * 1024


@dataclass(frozen=True)
class EngineFacts:
    """What the probe found about the container engine (see sandbox.engine.probe_engine)."""

    api_version: str
    runtimes: frozenset[str]
    cgroup_version: int
    cgroup_driver: str
    nvidia_toolkit_version: tuple[int, int, int] | None = None
    toolkit_probe_error: str | None = None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reported it; a field is None where NVML could not answer."""

    index: int
    uuid: str
    name: str | None
    memory_total_bytes: int | None
    compute_capability: tuple[int, int] | None
    driver_version: str | None
    cuda_driver_version: int | None  # e.g. 13000 for 13.0
    power_limit_mw: int | None
    mig_mode: int | None  # 0 disabled, 1 enabled
