"""At start-up, remove what a crashed runner left behind (trio shell).

Every container and volume the sandbox creates carries `suanli.node=<this node's peer id>` and
`suanli.agreement=<hex>` (sandbox.spec). A provider calls `reap_orphans` when it starts, before it
accepts work, and may call it again with the agreements it is still running.

Rule 1: only objects labelled with *this* node's id are touched: two nodes sharing one engine (or a
test run beside a real provider) never remove each other's jobs.
Rule 2: containers first (force, with anonymous volumes), then the labelled named volumes, so that a
volume is never "in use" by a container that is about to go.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import docker.errors

from sandbox.engine import Engine
from sandbox.spec import LABEL_AGREEMENT, LABEL_NODE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    containers: tuple[str, ...]
    volumes: tuple[str, ...]


def _reap(api: docker.APIClient, node_id: str, live: frozenset[str]) -> ReapReport:
    label = f"{LABEL_NODE}={node_id}"
    gone_containers, gone_volumes = [], []
    for c in api.containers(all=True, filters={"label": label}):
        if (c.get("Labels") or {}).get(LABEL_AGREEMENT) in live:
            continue
        try:
            api.remove_container(c["Id"], force=True, v=True)
            gone_containers.append(c["Id"])
        except docker.errors.NotFound:
            pass
    for v in api.volumes(filters={"label": label}).get("Volumes") or []:
        if (v.get("Labels") or {}).get(LABEL_AGREEMENT) in live:
            continue
        try:
            api.remove_volume(v["Name"], force=True)
            gone_volumes.append(v["Name"])
        except docker.errors.NotFound:
            pass
    return ReapReport(tuple(gone_containers), tuple(gone_volumes))


async def reap_orphans(engine: Engine, node_id: str, live_agreements: Collection[str] = ()) -> ReapReport:
    """Remove this node's containers and volumes whose agreement is not in `live_agreements`."""
    report = await engine.call(_reap, engine.api, node_id, frozenset(live_agreements), what="reap")
    if report.containers or report.volumes:
        log.warning("reaped %d container(s) and %d volume(s) left by an earlier run",
                    len(report.containers), len(report.volumes))
    return report
