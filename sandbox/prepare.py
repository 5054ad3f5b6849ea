"""One job end to end: plan it against this engine, run it with live logs and metering (trio shell).

`prepare_job` asks the engine what it can do and what the image's config says, then calls the pure
planner: every refusal (GPU without a toolkit, forbidden image env, limits) happens here, before any
container or volume exists; too little free disk is refused when the disk is reserved, before the
container exists (sandbox.disk Rule 3). `run_job` is the whole life of one job for callers that need no more
control than callbacks (the provider daemon uses `open_job` directly for pause/resume).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from sandbox.engine import Engine, probe_engine
from sandbox.images import image_env
from sandbox.jobio import LogLine
from sandbox.meter import run_meter
from sandbox.metering import MeterSample
from sandbox.plan import ContainerPlan, plan_container
from sandbox.runner import ExitResult, OutputArchive, open_job
from sandbox.spec import EngineFacts, GpuInfo, JobSpec, ProviderPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class JobOutcome:
    exit: ExitResult
    outputs: OutputArchive | None


async def prepare_job(engine: Engine, spec: JobSpec, policy: ProviderPolicy, *, node_id: str,
                      agreement_id: str, job_key: str, free_gpus: Sequence[GpuInfo] = (),
                      facts: EngineFacts | None = None) -> ContainerPlan:
    """The container plan for `spec` on this engine, or the SuanliError that says why not."""
    if facts is None:
        facts = await engine.call(probe_engine, engine.client, what="probe engine")
    env = await engine.call(image_env, engine.client, spec.image_id, what="inspect image")
    # Free disk is checked where the disk is reserved, in a worker thread (sandbox.plan Rule 3).
    return plan_container(spec, policy, facts, image_env=env, free_gpus=free_gpus, node_id=node_id,
                          agreement_id=agreement_id, job_key=job_key)


async def _drain(receive: trio.MemoryReceiveChannel[T], callback: Callable[[T], None] | None) -> None:
    async with receive:
        async for item in receive:
            if callback is not None:
                callback(item)


async def run_job(engine: Engine, plan: ContainerPlan, *, inputs: Mapping[str, bytes] | None = None,
                  on_log: Callable[[LogLine], None] | None = None,
                  on_sample: Callable[[MeterSample], None] | None = None,
                  outputs_to: Path | None = None, meter_interval_s: float = 1.0) -> JobOutcome:
    """Create, start, stream logs, meter, wait (deadline enforced), take outputs, remove."""
    async with open_job(engine, plan, inputs=inputs) as job:
        log_send, log_recv = trio.open_memory_channel[LogLine](256)
        sample_send, sample_recv = trio.open_memory_channel[MeterSample](16)

        async def pump_logs() -> None:
            async with log_send:
                await job.stream_logs(log_send)

        async def meter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with sample_send:
                await run_meter(job, sample_send, interval_s=meter_interval_s, task_status=task_status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, log_recv, on_log)
            nursery.start_soon(_drain, sample_recv, on_sample)
            await job.start()
            nursery.start_soon(pump_logs)
            await nursery.start(meter)
            result = await job.wait()
        outputs = await job.export_outputs(outputs_to) if outputs_to is not None else None
    return JobOutcome(result, outputs)
