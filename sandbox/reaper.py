"""At start-up, remove what a crashed runner left behind (trio shell).

Every container and volume the sandbox creates carries `suanli.node=<this node's peer id>`,
`suanli.agreement=<hex>` and, from the provider daemon, `suanli.owner=<its lock file>` (sandbox.spec).
A provider calls `reap_orphans` when it starts, after taking its lock (node.lock) and before it accepts
work, and may call it again with the agreements it is still running.

Rule 1: only objects labelled with *this* node's id are touched: two nodes sharing one engine (or a
test run beside a real provider) never remove each other's jobs.
Rule 2: containers first (force, with anonymous volumes), then the labelled named volumes, so that a
volume is never "in use" by a container that is about to go; then the job disk files in `disk_dir`
that no remaining volume uses (sandbox.disk), with their loop devices.
Rule 3: an object whose owner is another daemon that is still alive (its lock file is locked) is never
touched, even when it has this node's id: two daemons sharing one key must not reap each other's jobs.
Rule 4: daemon marker volumes (`suanli.role=daemon`, node.daemonlock) hold no job; those whose daemon is
dead are removed whatever their node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from sandbox.disk import SUFFIX, disk_files, release_disk
from sandbox.engine import Engine
from sandbox.spec import LABEL_AGREEMENT, LABEL_NODE, LABEL_OWNER, LABEL_ROLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    containers: tuple[str, ...]
    volumes: tuple[str, ...]
    disks: tuple[str, ...] = ()
    spared: tuple[str, ...] = ()  # the lock files of live daemons with the same key whose objects were kept (Rule 3)


def _reap(api: docker.APIClient, node_id: str, live: frozenset[str], disk_dir: Path | None,
          owner_alive: Callable[[str], bool] | None) -> ReapReport:
    label = f"{LABEL_NODE}={node_id}"
    gone_containers, gone_volumes, spared = [], [], []

    def keep(labels: dict[str, str] | None, name: str) -> bool:
        labels = labels or {}
        if labels.get(LABEL_AGREEMENT) in live:
            return True
        owner = labels.get(LABEL_OWNER)
        if owner is not None and owner_alive is not None and owner_alive(owner):
            if owner not in spared:
                spared.append(owner)
            return True
        return False

    for c in api.containers(all=True, filters={"label": label}):
        if keep(c.get("Labels"), c["Id"]):
            continue
        try:
            api.remove_container(c["Id"], force=True, v=True)
            gone_containers.append(c["Id"])
        except docker.errors.NotFound:
            pass
    for v in api.volumes(filters={"label": label}).get("Volumes") or []:
        if keep(v.get("Labels"), v["Name"]):
            continue
        try:
            api.remove_volume(v["Name"], force=True)
            gone_volumes.append(v["Name"])
        except docker.errors.NotFound:
            pass
    # A daemon's marker volume holds nothing; one whose daemon is dead (kill -9, never restarted with
    # its key) is removed whatever its node, or crashed daemons would leave one each forever (Rule 4).
    markers = []
    if owner_alive is not None:
        markers = api.volumes(filters={"label": f"{LABEL_ROLE}=daemon"}).get("Volumes") or []
    for v in markers:
        owner = (v.get("Labels") or {}).get(LABEL_OWNER)
        if owner is not None and owner_alive is not None and not owner_alive(owner) and v["Name"] not in gone_volumes:
            try:
                api.remove_volume(v["Name"], force=True)
                gone_volumes.append(v["Name"])
            except docker.errors.APIError:  # gone already, or in use by something that is not ours
                pass
    gone_disks = []
    if disk_dir is not None:
        in_use = {v["Name"] for v in api.volumes(filters={"label": label}).get("Volumes") or []}
        for path in disk_files(disk_dir):
            if path.name.removesuffix(SUFFIX) not in in_use:
                release_disk(path)
                gone_disks.append(path.name)
    return ReapReport(tuple(gone_containers), tuple(gone_volumes), tuple(gone_disks), tuple(spared))


async def reap_orphans(engine: Engine, node_id: str, live_agreements: Collection[str] = (), *,
                       disk_dir: Path | None = None,
                       owner_alive: Callable[[str], bool] | None = None) -> ReapReport:
    """Remove this node's containers, volumes and job disks whose agreement is not in `live_agreements`
    and whose owning daemon is not alive (`owner_alive(lock path)`, Rule 3), and dead daemons' markers
    (Rule 4). Without `owner_alive` (library use) owners are not consulted and markers are left alone."""
    report = await engine.call(_reap, engine.api, node_id, frozenset(live_agreements), disk_dir, owner_alive,
                               what="reap")
    if report.containers or report.volumes or report.disks:
        log.warning("reaped %d container(s), %d volume(s) and %d disk(s) left by an earlier run",
                    len(report.containers), len(report.volumes), len(report.disks))
    if report.spared:
        log.debug("left the objects of %d other live daemon(s) with this key alone", len(report.spared))
    return report
