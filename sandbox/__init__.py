"""sandbox: run a stranger's job in a hardened Docker container, meter it, clean up after it.

Pure cores (no docker, trio or pynvml import; `now` and data in, data out; table-driven tests):

    spec.py      SandboxJob, ProviderPolicy, EngineFacts, GpuInfo, labels; images only by pinned id
    plan.py      spec + policy + engine facts + free GPUs → ContainerPlan (hardening, refusals, GPU gate)
    metering.py  Meter: run-state clock (paused time excluded) + cumulative integer usage → MeterSample
    nvml.py      NVML records → GPU inventory, per-job GPU readings (host PID → container id)
    archive.py   digests recomputed from any image archive; a buyer's checked and rewritten clean
    archive_writer.py  deterministic docker-archive/OCI image archives (the same inputs, the same bytes)
    tarwalk.py   the guarded reader of untrusted tars (outer tar and layers): headers checked before data
    jobio.py     the /io volume as tar bytes (inputs in, outputs out; which /io/out entries go back),
                 log line splitting, the log body decoder (LogFrames), the log rate limit (LogRateLimit)

Readers without docker or trio (blocking, tiny):

    cgroups.py   a container's cgroup v1/v2 counter files, located from its host PID, and parsed
    gpus.py      the only pynvml import: NVML answers → records of the recorded-fixture shape
    disk.py      a job's /io filesystem: fallocate, mkfs.ext4, a loop device; released by name

Shells (docker SDK calls in worker threads behind a CapacityLimiter; trio):

    engine.py    connect (API version negotiated), probe (runtimes, cgroups, NVIDIA toolkit), Engine.call
    images.py    load a buyer's archive after checking it; build the busybox demo image
                 (`python -m sandbox.images build-demo`)
    runner.py    open_job: volume + container, start, logs, deadline, stop, pause/resume, outputs, removal
    logreader.py a log stream's reader thread: frames, lines, the rate limit, a bounded queue (blocking)
    outputs.py   the outputs' tar from the engine under the byte cap, only dirs and files kept (blocking)
    meter.py     run_meter: once a second per job, cgroup files (or the stats API) and NVML → samples
    reaper.py    reap_orphans: remove this node's labelled containers, volumes and disks left by a crash,
                 never those of a live daemon sharing the key
    prepare.py   prepare_job: probe, the image's env, the plan (all refusals before anything exists); the provider's too

docs/SANDBOX.md gives the reasons: the hardening list, the metering sources, image pinning and GPU gating.
"""
