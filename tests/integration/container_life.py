"""The life of one container as the provider drives it (node.jobcontainer), for sandbox tests that need
no more control than callbacks: open_job, start, the log stream, wait (which enforces the deadline)
beside the meter's Sampler in the job's own loop, the outputs. The one lifecycle stays in
sandbox.runner and node.jobcontainer (sandbox.run's second one is gone); this only strings its calls
together with no receipts or buyer around them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from sandbox.engine import Engine
from sandbox.jobio import LogLine
from sandbox.meter import open_sampler
from sandbox.metering import MeterSample
from sandbox.outputs import OutputArchive
from sandbox.plan import ContainerPlan
from sandbox.runner import ExitResult, open_job


@dataclass(frozen=True)
class ContainerRun:
    exit: ExitResult
    outputs: OutputArchive | None


async def run_container(engine: Engine, plan: ContainerPlan, *, inputs: Mapping[str, bytes] | None = None,
                        on_log: Callable[[LogLine], None] | None = None,
                        on_sample: Callable[[MeterSample], None] | None = None,
                        outputs_to: Path | None = None, meter_interval_s: float = 1.0) -> ContainerRun:
    async with open_job(engine, plan, inputs=inputs) as job:
        log_send, log_recv = trio.open_memory_channel[LogLine](256)

        async def pump_logs() -> None:
            async with log_send:
                await job.stream_logs(log_send)

        async def forward_logs() -> None:
            async with log_recv:
                async for line in log_recv:
                    if on_log is not None:
                        on_log(line)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_logs)
            await job.start()
            nursery.start_soon(pump_logs)
            async with trio.open_nursery() as waiting:
                waiting.start_soon(job.wait)  # its exit ends the sampler's loop
                async with open_sampler(job, interval_s=meter_interval_s) as sampler:
                    while (sample := await sampler.next()) is not None:
                        if on_sample is not None:
                            on_sample(sample)
            result = job.result
            assert result is not None
        outputs = await job.export_outputs(outputs_to) if outputs_to is not None else None
    return ContainerRun(result, outputs)
