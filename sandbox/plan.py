"""Job spec + provider policy + engine facts + free GPUs → a hardened container plan (pure).

Every container gets the same baseline, whatever the buyer asks (docs/SANDBOX.md says why):
no network, read-only root with a small tmpfs /tmp, a per-job volume at /io, all capabilities
dropped, no-new-privileges, Docker's default seccomp (or the operator's stricter profile), user
65534:65534, a pids limit, CPU and memory limits with no swap, ulimits nofile/core=0/fsize, an init
process, capped json-file logs, no proxy variables, and labels tying it to the node and agreement.

Rule 1: a refusal happens here, before anything is created: a GPU job with no NVIDIA runtime or an
old toolkit, an image whose config sets LD_PRELOAD / LD_LIBRARY_PATH / NVIDIA_* (CVE-2025-23266), a
request above the policy.
Rule 2: GPUs are named by UUID, never by count (a count maps to indices 0..n-1 on the host).
Rule 3: with a `disk_dir`, /io is a filesystem of the agreed `disk_mib` (sandbox.disk). Free disk is
measured once, where the space is reserved (sandbox.disk.make_disk, in a worker thread), and checked
here by `check_disk_room`: a job or an upload is refused unless it leaves `disk_reserve_bytes` free
(max(1 GiB, 5 % of the filesystem)), so the provider's own SQLite appends and logs never meet a full
disk (issue 13 H4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2p.errors import ConfigError
from sandbox.errors import GpuUnavailableError, ImageError, SandboxError
from sandbox.spec import (
    LABEL_AGREEMENT,
    LABEL_NODE,
    LABEL_OWNER,
    LABEL_ROLE,
    EngineFacts,
    GpuInfo,
    ProviderPolicy,
    SandboxJob,
)

MIB = 1 << 20
USER = "65534:65534"
IO_DIR = "/io"
GPU_CAPABILITIES = (("gpu", "compute", "utility"),)
_FORBIDDEN_ENV = re.compile(r"(LD_PRELOAD|LD_LIBRARY_PATH|NVIDIA_.*)")
MIN_DISK_MIB = 16  # mkfs.ext4 leaves a job almost nothing below this; `suanli run --disk`'s floor too
MAX_DISK_MIB = 1 << 30  # 1 PiB: limits.disk_mib's and `--disk`'s ceiling, so a proposal always encodes
DISK_SUFFIX = ".ext4"  # a job's disk file: <disk_dir>/<volume name>.ext4 (sandbox.disk, the reaper)
DISK_RESERVE_MIN_BYTES = 1 << 30
DISK_RESERVE_PERCENT = 5
_VERSION = re.compile(r"version\s*:?\s*v?(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ContainerPlan:
    """Everything the runner passes to Docker, as plain data (the shell builds the SDK objects)."""

    name: str
    volume_name: str
    image_id: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    user: str
    working_dir: str
    nano_cpus: int
    cpus_millicores: int
    memory_bytes: int
    pids_limit: int
    ulimits: tuple[tuple[str, int, int], ...]  # (name, soft, hard)
    tmpfs: Mapping[str, str]
    security_opt: tuple[str, ...]
    runtime: str | None
    gpu_uuids: tuple[str, ...]
    gpu_capabilities: tuple[tuple[str, ...], ...]
    log_max_size_mib: int
    log_max_files: int
    stop_timeout_s: int
    deadline_ms: int
    output_max_bytes: int
    oom_score_adj: int
    disk_bytes: int = 0  # the size of the job's /io filesystem; 0 with disk_file None: a plain volume
    disk_file: str | None = None  # <policy.disk_dir>/<volume_name>.ext4 (sandbox.disk)


def forbidden_env(env_entries: Sequence[str] | Mapping[str, str]) -> list[str]:
    """Names among `env_entries` ("K=V" strings or a mapping) that a job may never set."""
    names = env_entries.keys() if isinstance(env_entries, Mapping) else [e.split("=", 1)[0]
                                                                          for e in env_entries]
    return sorted(n for n in names if _FORBIDDEN_ENV.fullmatch(n))


def parse_toolkit_version(text: str) -> tuple[int, int, int] | None:
    """The x.y.z from `nvidia-ctk --version` or `nvidia-container-cli --version` output."""
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_gpu_support(facts: EngineFacts, policy: ProviderPolicy) -> None:
    """Raise GpuUnavailableError unless this engine may run GPU jobs at all."""
    if "nvidia" not in facts.runtimes:
        raise GpuUnavailableError(
            "GPU jobs need the NVIDIA Container Toolkit: the Docker engine has no 'nvidia' runtime "
            f"registered (install nvidia-container-toolkit >= {_dotted(policy.min_toolkit_version)} "
            "and run `nvidia-ctk runtime configure --runtime=docker`)",
            reason="no_nvidia_runtime", actual=sorted(facts.runtimes))
    version = facts.nvidia_toolkit_version
    if version is None or version < policy.min_toolkit_version:
        shown = _dotted(version) if version else (facts.toolkit_probe_error or "unknown")
        raise GpuUnavailableError(
            f"GPU jobs need NVIDIA Container Toolkit >= {_dotted(policy.min_toolkit_version)} (earlier "
            f"versions have known container escapes); found {shown}",
            reason="old_toolkit", expected=policy.min_toolkit_version, actual=version)


def select_gpus(spec: SandboxJob, free: Sequence[GpuInfo]) -> tuple[str, ...]:
    """UUIDs of the first `spec.gpus` free GPUs of the asked model, in index order (Rule 2)."""
    fit = [g for g in sorted(free, key=lambda g: g.index)
           if spec.gpu_model is None or (g.name or "") == spec.gpu_model]
    if len(fit) < spec.gpus:
        raise GpuUnavailableError(
            f"the job asks for {spec.gpus} GPU(s)"
            + (f" of model {spec.gpu_model!r}" if spec.gpu_model else "")
            + f" but {len(fit)} free one(s) fit", reason="not_enough_gpus", expected=spec.gpus,
            actual=len(fit))
    return tuple(g.uuid for g in fit[: spec.gpus])


def disk_reserve_bytes(fs_bytes: int) -> int:
    """What the provider keeps free for itself on a filesystem of `fs_bytes` (Rule 3)."""
    return max(DISK_RESERVE_MIN_BYTES, fs_bytes * DISK_RESERVE_PERCENT // 100)


def check_disk_room(need_bytes: int, free_bytes: int, fs_bytes: int, *, what: str) -> None:
    """Raise SandboxError (reason ``disk_full``) unless `need_bytes` fit in `free_bytes` with the
    reserve left over (Rule 3); `what` names the asker in the one line the buyer reads."""
    reserve = disk_reserve_bytes(fs_bytes)
    usable = max(0, free_bytes - reserve)
    if need_bytes > usable:
        raise SandboxError(f"{what} needs {-(-need_bytes >> 20)} MiB of disk, but this provider has "
                           f"{free_bytes >> 20} MiB free and keeps {reserve >> 20} MiB of it for itself; "
                           "refusing (try again later, or a smaller size)",
                           reason="disk_full", expected=need_bytes, actual=usable)


def default_disk_mib(free_bytes: int, fs_bytes: int, other_budgets_bytes: int) -> int:
    """``limits.disk_mib = 0``: half of what the filesystem has free once the reserve and the disk
    budgets that share it (image uploads in flight, kept buyer images) are taken off; never negative."""
    spare = free_bytes - disk_reserve_bytes(fs_bytes) - other_budgets_bytes
    return max(0, spare) // MIB // 2


def _check_limits(spec: SandboxJob, policy: ProviderPolicy) -> None:
    for asked, limit, key in ((spec.cpus_millicores, policy.max_cpus_millicores, "cpus_millicores"),
                              (spec.memory_mib, policy.max_memory_mib, "memory_mib"),
                              (spec.gpus, policy.max_gpus, "gpus"),
                              (spec.max_duration_ms, policy.max_duration_ms, "max_duration_ms"),
                              (spec.disk_mib, policy.max_disk_mib, "disk_mib")):
        if asked > limit:
            raise SandboxError(f"the job asks for {key}={asked}, above this provider's limit {limit}",
                               key=key, expected=limit, actual=asked)


def plan_container(spec: SandboxJob, policy: ProviderPolicy, facts: EngineFacts, *, image_env: Sequence[str],
                   free_gpus: Sequence[GpuInfo], node_id: str, agreement_id: str,
                   job_key: str) -> ContainerPlan:
    """The hardened plan for one job, or a SuanliError that says why it cannot run (Rule 1).

    `image_env` is the image config's Env ("K=V" entries, from inspect or the archive);
    `job_key` makes container and volume names unique per attempt. Free disk is checked where the
    disk is reserved (Rule 3), not here: a measure taken now would be stale by then.
    """
    if policy.allowed_images is not None and spec.image_id not in policy.allowed_images:
        raise ImageError("this provider does not run that image", image_id=spec.image_id)
    if bad := forbidden_env(image_env):
        raise ImageError(f"the image config sets {', '.join(bad)}, which a job image may not set "
                         "(they reach host-side hooks)", image_id=spec.image_id, actual=bad)
    if bad := forbidden_env(spec.env):
        raise SandboxError(f"the job environment sets {', '.join(bad)}, which a job may not set",
                           actual=bad)
    _check_limits(spec, policy)
    if policy.runtime is not None and policy.runtime not in facts.runtimes:
        raise ConfigError(f"sandbox runtime {policy.runtime!r} is configured but the Docker engine has "
                          f"only {sorted(facts.runtimes)}; register it or unset the key",
                          key="runtime", actual=policy.runtime)
    env = dict(spec.env)
    gpu_uuids: tuple[str, ...] = ()
    if spec.gpus:
        check_gpu_support(facts, policy)
        gpu_uuids = select_gpus(spec, free_gpus)
        # The container env overrides the image's: the toolkit sees exactly these devices.
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_uuids)
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
    else:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    disk_bytes, disk_file = 0, None
    if policy.disk_dir is not None:
        disk_bytes = max(spec.disk_mib, MIN_DISK_MIB) * MIB
        disk_file = f"{policy.disk_dir.rstrip('/')}/suanli-io-{job_key}{DISK_SUFFIX}"
    labels = {LABEL_NODE: node_id, LABEL_AGREEMENT: agreement_id, LABEL_ROLE: "job"}
    if policy.owner_lock is not None:
        labels[LABEL_OWNER] = policy.owner_lock
    security_opt = ["no-new-privileges:true"]
    if policy.seccomp_profile_json is not None:
        security_opt.append("seccomp=" + policy.seccomp_profile_json)
    fsize = policy.fsize_mib * MIB
    return ContainerPlan(
        name=f"suanli-job-{job_key}", volume_name=f"suanli-io-{job_key}", image_id=spec.image_id,
        command=spec.command, env=env, labels=labels, user=USER, working_dir=IO_DIR,
        nano_cpus=spec.cpus_millicores * 1_000_000, cpus_millicores=spec.cpus_millicores,
        memory_bytes=spec.memory_mib * MIB, pids_limit=policy.pids_limit,
        ulimits=(("nofile", policy.nofile, policy.nofile), ("core", 0, 0), ("fsize", fsize, fsize)),
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={policy.tmpfs_mib}m,mode=1777"},
        security_opt=tuple(security_opt), runtime=policy.runtime, gpu_uuids=gpu_uuids,
        gpu_capabilities=GPU_CAPABILITIES if gpu_uuids else (),
        log_max_size_mib=policy.log_max_size_mib, log_max_files=policy.log_max_files,
        stop_timeout_s=-(-policy.stop_grace_ms // 1000), deadline_ms=spec.max_duration_ms,
        output_max_bytes=policy.output_max_bytes, oom_score_adj=policy.oom_score_adj,
        disk_bytes=disk_bytes, disk_file=disk_file,
    )
