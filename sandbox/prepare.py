"""One job's container plan on this engine (trio shell): the one preparation, the provider's included.

`prepare_job` asks the engine what it can do (unless the caller probed it already, as the provider
does once at start) and what the image's config says, then calls the pure planner: every refusal (GPU
without a toolkit, forbidden image env, limits) happens here, before any container or volume exists;
too little free disk is refused when the disk is reserved, before the container exists (sandbox.disk
Rule 3). The job's life is then sandbox.runner.open_job's, driven by node.jobcontainer (the provider);
there is no second lifecycle.
"""

from __future__ import annotations

from collections.abc import Sequence

from sandbox.engine import Engine, probe_engine
from sandbox.images import image_env
from sandbox.plan import ContainerPlan, plan_container
from sandbox.spec import EngineFacts, GpuInfo, ProviderPolicy, SandboxJob


async def prepare_job(engine: Engine, spec: SandboxJob, policy: ProviderPolicy, *, node_id: str,
                      agreement_id: str, job_key: str, free_gpus: Sequence[GpuInfo] = (),
                      facts: EngineFacts | None = None) -> ContainerPlan:
    """The container plan for `spec` on this engine, or the SuanliError that says why not."""
    if facts is None:
        facts = await engine.call(probe_engine, engine.client, what="probe engine")
    env = await engine.call(image_env, engine.client, spec.image_id, what="inspect image")
    # Free disk is checked where the disk is reserved, in a worker thread (sandbox.plan Rule 3).
    return plan_container(spec, policy, facts, image_env=env, free_gpus=free_gpus, node_id=node_id,
                          agreement_id=agreement_id, job_key=job_key)
