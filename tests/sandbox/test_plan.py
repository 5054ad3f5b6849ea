"""The container planner: the hardening baseline and every refusal, as tables (pure, no Docker)."""

from __future__ import annotations

import dataclasses

import pytest

from p2p.errors import ConfigError, GpuUnavailableError, ImageError, SandboxError
from sandbox.plan import forbidden_env, parse_toolkit_version, plan_container
from sandbox.spec import EngineFacts, GpuInfo, ProviderPolicy, SandboxJob, pinned_image_id

IMAGE = "sha256:" + "ab" * 32
AGREEMENT = "cd" * 32
RUNC = EngineFacts("1.41", frozenset({"runc"}), 1, "cgroupfs")
NVIDIA = EngineFacts("1.45", frozenset({"runc", "nvidia"}), 2, "systemd", nvidia_toolkit_version=(1, 18, 0))


def gpu(index: int, name: str = "NVIDIA H200") -> GpuInfo:
    return GpuInfo(index, f"GPU-{index:08d}-1111-2222-3333-444444444444", name, 150_754_820_096, (9, 0),
                   "580.159.04", 13000, 700_000, 0)


def plan(spec: SandboxJob | None = None, policy: ProviderPolicy | None = None, facts: EngineFacts = RUNC,
         image_env=("PATH=/bin",), free_gpus=()):
    return plan_container(spec or SandboxJob(IMAGE, ("true",)), policy or ProviderPolicy(), facts,
                          image_env=list(image_env), free_gpus=free_gpus, node_id="12D3KooWnode",
                          agreement_id=AGREEMENT, job_key="k1")


def test_baseline_hardening_on_every_plan():
    p = plan(SandboxJob(IMAGE, ("sh", "-c", "exit 0"), cpus_millicores=1500, memory_mib=64))
    assert p.image_id == IMAGE and p.user == "65534:65534" and p.working_dir == "/io"
    assert p.nano_cpus == 1_500_000_000 and p.memory_bytes == 64 << 20
    assert p.pids_limit == 256
    assert dict((n, (s, h)) for n, s, h in p.ulimits) == {
        "nofile": (1024, 1024), "core": (0, 0), "fsize": (1 << 30, 1 << 30)}
    assert p.tmpfs["/tmp"].startswith("rw,nosuid,nodev,size=64m")
    assert p.security_opt == ("no-new-privileges:true",)  # Docker's default seccomp applies
    assert p.labels == {"suanli.node": "12D3KooWnode", "suanli.agreement": AGREEMENT, "suanli.role": "job"}
    assert p.gpu_uuids == () and p.env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert p.runtime is None and p.stop_timeout_s == 10
    assert not any(k.upper().endswith("_PROXY") for k in p.env)


def test_stricter_seccomp_profile_is_inlined():
    p = plan(policy=ProviderPolicy(seccomp_profile_json='{"defaultAction":"SCMP_ACT_ERRNO"}'))
    assert p.security_opt == ("no-new-privileges:true", 'seccomp={"defaultAction":"SCMP_ACT_ERRNO"}')


@pytest.mark.parametrize("value", [
    "busybox", "busybox:latest", "sha256:abc", "sha256:" + "AB" * 32, "docker.io/x@sha256:" + "ab" * 32,
])
def test_images_only_by_pinned_id(value):
    with pytest.raises(ImageError):
        pinned_image_id(value)
    with pytest.raises(ImageError):
        SandboxJob(value, ("true",))


@pytest.mark.parametrize("env, refused", [
    (["PATH=/bin"], []),
    (["LD_PRELOAD=/x.so"], ["LD_PRELOAD"]),
    (["LD_LIBRARY_PATH=/x", "HOME=/"], ["LD_LIBRARY_PATH"]),
    (["NVIDIA_VISIBLE_DEVICES=all"], ["NVIDIA_VISIBLE_DEVICES"]),
    (["NVIDIA_DRIVER_CAPABILITIES=all", "NVIDIA_REQUIRE_CUDA=x"],
     ["NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_REQUIRE_CUDA"]),
    (["MY_LD_PRELOAD=1", "XNVIDIA_X=1"], []),
])
def test_forbidden_image_env(env, refused):
    assert forbidden_env(env) == refused
    if refused:
        with pytest.raises(ImageError) as info:
            plan(image_env=env)
        assert info.value.actual == refused


def test_forbidden_job_env_refused_too():
    with pytest.raises(SandboxError):
        plan(SandboxJob(IMAGE, ("true",), env={"LD_PRELOAD": "/x.so"}))


@pytest.mark.parametrize("field, value", [
    ("cpus_millicores", 2001), ("memory_mib", 4097), ("max_duration_ms", 24 * 3_600_000 + 1),
])
def test_requests_above_policy_refused(field, value):
    spec = dataclasses.replace(SandboxJob(IMAGE, ("true",)), **{field: value})
    with pytest.raises(SandboxError) as info:
        plan(spec)
    assert info.value.key == field and info.value.actual == value


@pytest.mark.parametrize("kwargs", [
    {"command": ()}, {"cpus_millicores": 0}, {"memory_mib": -1}, {"gpus": -1},
    {"env": {"1BAD": "x"}}, {"max_duration_ms": 1.5},
])
def test_malformed_specs_refused(kwargs):
    with pytest.raises(ConfigError):
        SandboxJob(**{"image_id": IMAGE, "command": ("true",), **kwargs})


@pytest.mark.parametrize("facts, reason", [
    (RUNC, "no_nvidia_runtime"),
    (dataclasses.replace(NVIDIA, nvidia_toolkit_version=None), "old_toolkit"),
    (dataclasses.replace(NVIDIA, nvidia_toolkit_version=(1, 17, 7)), "old_toolkit"),
    (dataclasses.replace(NVIDIA, nvidia_toolkit_version=(1, 16, 2)), "old_toolkit"),
])
def test_gpu_jobs_gated_on_runtime_and_toolkit(facts, reason):
    with pytest.raises(GpuUnavailableError) as info:
        plan(SandboxJob(IMAGE, ("true",), gpus=1), facts=facts, free_gpus=[gpu(0)])
    assert info.value.reason == reason


def test_gpus_requested_by_uuid_never_by_count():
    p = plan(SandboxJob(IMAGE, ("true",), gpus=2), facts=NVIDIA, free_gpus=[gpu(3), gpu(1), gpu(2)])
    assert p.gpu_uuids == (gpu(1).uuid, gpu(2).uuid)
    assert p.gpu_capabilities == (("gpu", "compute", "utility"),)
    assert p.env["NVIDIA_VISIBLE_DEVICES"] == f"{gpu(1).uuid},{gpu(2).uuid}"
    assert p.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"


@pytest.mark.parametrize("gpus, model, free, ok", [
    (1, None, [], False),
    (1, "NVIDIA H200", [gpu(0, "NVIDIA H100")], False),
    (1, "NVIDIA H100", [gpu(0, "NVIDIA H200"), gpu(1, "NVIDIA H100")], True),
    (3, None, [gpu(0), gpu(1)], False),
])
def test_gpu_selection(gpus, model, free, ok):
    spec = SandboxJob(IMAGE, ("true",), gpus=gpus, gpu_model=model)
    if ok:
        assert plan(spec, facts=NVIDIA, free_gpus=free).gpu_uuids
    else:
        with pytest.raises(GpuUnavailableError):
            plan(spec, facts=NVIDIA, free_gpus=free)


def test_runtime_must_be_registered():
    with pytest.raises(ConfigError) as info:
        plan(policy=ProviderPolicy(runtime="runsc"))
    assert info.value.key == "runtime"
    facts = dataclasses.replace(RUNC, runtimes=frozenset({"runc", "runsc"}))
    assert plan(policy=ProviderPolicy(runtime="runsc"), facts=facts).runtime == "runsc"


def test_allowed_images():
    with pytest.raises(ImageError):
        plan(policy=ProviderPolicy(allowed_images=frozenset({"sha256:" + "00" * 32})))
    assert plan(policy=ProviderPolicy(allowed_images=frozenset({IMAGE}))).image_id == IMAGE


@pytest.mark.parametrize("text, version", [
    ("NVIDIA Container Toolkit CLI version 1.17.8\ncommit: abc", (1, 17, 8)),
    ("cli-version: 1.18.2\nlib-version: 1.18.2", (1, 18, 2)),
    ("NVIDIA Container Runtime Hook version 1.16.1", (1, 16, 1)),
    ("something else", None),
])
def test_toolkit_version_parsing(text, version):
    assert parse_toolkit_version(text) == version
