"""The provider daemon's composition (``suanli provide``): one trio process that sells this machine.

    open_provider(setup) -> ProviderRuntime
      engine probe + reaper          orphaned containers of an earlier run are removed
      store (SQLite)                 agreements left open by a crash are closed with closing receipts
      inventory -> offer             NVML GPUs priced by the operator, CPU and memory
      host: /suanli/negotiate, /suanli/job, /suanli/offer, the offers topic, the DHT
      publisher                      re-signs and announces the offer on change and before expiry
      owner watch                    with [owner]: nothing free while the owner uses the machine (issue 18)
      control socket                 ``suanli status`` (node/control.py)

Rule 0: a provider that cannot give jobs their disks (not root, no losetup or mkfs.ext4) refuses to
start with one line, rather than advertise disk and fail every job (docs/SANDBOX.md, "Disk"). It
takes its data-dir lock and its key lock (node.daemonlock Rules 1 and 3) before it looks at the engine,
so of two daemons with one key that start together exactly one runs.
Rule 1: graceful shutdown stops taking work, ends running jobs with a final receipt
(``provider_shutdown``), then withdraws the offer; ``kill -9`` is handled at the next start (reaper
and closing receipts), so the database always audits clean.
Rule 2 (issue 17 item 9): a provider never offers more cores or memory than its machine has: a
configuration that asks for more is refused with one line before anything starts (not capped: an
operator who wrote a number meant it, and a silent cap would hide the typo).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path

import trio

from market.capacity import Allocation, CapacityLedger
from market.offers import OfferedGpu, ProviderTerms, build_offer, needs_refresh
from market.reputation import COMPLETED, NEVER_STARTED, STOPPED_COUNTERSIGNING
from market.service import ProviderMarket
from node.config import ImageSettings
from node.daemonlock import lock_alive, take_daemon_lock, take_key_lock
from node.jobimages import ProviderImages
from node.owner_state import availability
from node.owner_watch import AVAILABLE, DEVICE_GLOBS, OwnerPrefs, Verdict, owner_status, watch_owner
from node.provider_job import IMAGE_DISK_BUDGET_BYTES, ActiveJob, JobServices, serve_job
from p2p import job_wire as jobwire
from p2p.envelope import Signed, sign_record, signed_from_wire
from p2p.errors import ConfigError, SuanliError
from p2p.framing import serve_framed
from p2p.host import HostConfig, Node, open_host
from p2p.identity import NodeKey, peer_id_from_public
from p2p.market_records import Agreement, GpuSpec, Offer, Proposal
from p2p.negotiate_wire import PROTOCOL_ID as NEGOTIATE_PROTOCOL
from p2p.receipt_records import BUYER_UNRESPONSIVE, EXPIRED, PROVIDER_RESTART, PROVIDER_SHUTDOWN, Receipt
from sandbox.disk import disk_room, disk_support_problem
from sandbox.engine import Engine, connect, probe_engine
from sandbox.gpus import gpu_inventory
from sandbox.plan import default_disk_mib
from sandbox.reaper import reap_orphans
from sandbox.spec import LABEL_NODE, LABEL_OWNER, LABEL_ROLE, GpuInfo, ProviderPolicy
from settlement.astore import AsyncStore, open_store
from settlement.session import closing_receipt

log = logging.getLogger("suanli.node.provider")

Announce = Callable[[Node, Signed[Offer]], Awaitable[None]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class ProviderSetup:
    key: NodeKey
    data_dir: Path
    terms: ProviderTerms
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    cpu_millis: int = 0  # 0: every core
    memory_mib: int = 0  # 0: three quarters of the machine
    # 0: half the free disk under data_dir once the reserve and the image budgets are taken off
    # (sandbox.plan.default_disk_mib; jobs' /io filesystems, sandbox.disk)
    disk_mib: int = 0
    policy: ProviderPolicy = field(default_factory=ProviderPolicy)
    hold_ms: int = 10_000
    # issue 13 M3: a confirmed agreement whose job has not started after this is closed (reason
    # `expired`), its capacity freed and `never_started` noted against the buyer.
    start_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0
    key_lock_dir: Path | None = None  # None: /run/lock, else the temporary directory (node.daemonlock Rule 3)
    owner: OwnerPrefs | None = None  # issue 18: [owner]; None: sold around the clock (node.owner_watch)
    images: ImageSettings = field(default_factory=ImageSettings)  # issue 19: [images] (node.jobimages)
    owner_devices: tuple[str, ...] = DEVICE_GLOBS  # the terminals and input devices watched


def offered_gpus(infos: list[GpuInfo], terms: ProviderTerms) -> list[OfferedGpu]:
    """NVML's GPUs as offer entries; a GPU whose model has no price is not offered."""
    out = []
    for g in infos:
        if g.name is None or g.name not in terms.prices.gpu_micros_per_s or g.mig_mode == 1:
            continue
        cc = f"{g.compute_capability[0]}.{g.compute_capability[1]}" if g.compute_capability else ""
        cuda = f"{g.cuda_driver_version // 1000}.{g.cuda_driver_version % 1000 // 10}" if g.cuda_driver_version else ""
        out.append(OfferedGpu(g.uuid, GpuSpec(model=g.name, memory_mib=(g.memory_total_bytes or 0) >> 20,
                                              compute_capability=cc, driver_version=g.driver_version or "",
                                              cuda_version=cuda)))
    return out


def machine_cpu_millis() -> int:
    return len(os.sched_getaffinity(0)) * 1000


def machine_memory_mib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def check_capacity(cpu_millis: int, memory_mib: int, machine_cpu: int, machine_mem: int) -> None:
    """Rule 2: an offer of more cores or memory than the machine has is a configuration error (0: the
    defaults, all cores and three quarters of the memory)."""
    if cpu_millis > machine_cpu:
        raise ConfigError(f"limits.cpu_millis: {cpu_millis} is more than this machine's {machine_cpu // 1000} "
                          f"core(s) ({machine_cpu} millicores); offer at most that, or 0 for all of them",
                          key="limits.cpu_millis", value=cpu_millis, machine=machine_cpu)
    if memory_mib > machine_mem:
        raise ConfigError(f"limits.memory_mib: {memory_mib} MiB is more than this machine's memory ({machine_mem} "
                          f"MiB); offer at most that, or 0 for three quarters of it", key="limits.memory_mib",
                          value=memory_mib, machine=machine_mem)


@dataclass
class ProviderRuntime:
    setup: ProviderSetup
    node: Node
    store: AsyncStore
    market: ProviderMarket
    services: JobServices
    ledger: CapacityLedger
    gpus: list[OfferedGpu]
    offer: Signed[Offer] | None = None
    seq: int = 0
    earned_micros: int = 0
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    accepting: bool = True
    changed: trio.Event = field(default_factory=trio.Event)
    owner: Verdict | None = None  # node.owner_watch Rule 1: nothing free unless available (GPU-only: no GPU)

    def current_offer(self, now_ms: int) -> Offer:
        free, owner = self.ledger.free(), self.owner
        sell = self.accepting and (owner is None or owner.state == AVAILABLE or owner.gpu_only)
        gpus = sell and (owner is None or owner.state == AVAILABLE)
        images = self.services.images
        local = datetime.fromtimestamp(now_ms / 1000).astimezone()  # the offer's own clock
        window_end_ms, notice_ms, preemptible = availability(self.setup.owner, local)
        return build_offer(
            self.setup.key.public, self.node.addrs(), self.setup.terms, self.gpus, self.ledger.cpu_millis,
            self.ledger.memory_mib, free.gpu_uuids if gpus else (), free.cpu_millis if sell else 0,
            free.memory_mib if sell else 0, self.seq + 1, now_ms,
            disk_mib=self.ledger.disk_mib, free_disk_mib=free.disk_mib if sell else 0,
            images=images.offered if images is not None else (), window_end_ms=window_end_ms, notice_ms=notice_ms,
            preemptible=preemptible)  # issues 18 and 19: what the buyer ranks and plans by

    async def publish_if_needed(self, announce: Announce | None, *, force: bool = False) -> None:
        now = wall_ms()
        candidate = self.current_offer(now)
        if not force and not needs_refresh(self.offer.record if self.offer else None, candidate, now):
            return
        self.seq = candidate.seq
        self.offer = sign_record(candidate, self.setup.key)
        self.market.publish(self.offer)  # negotiable before anyone can fetch it
        await self.store.put_offer(self.offer)
        if announce is not None:
            try:
                await announce(self.node, self.offer)
            except Exception as exc:  # a failed announcement is retried at the next tick
                log.warning("announcing offer seq %d failed: %s", self.seq, exc)
                self.errors.append(f"announce: {exc}")

    def status(self) -> dict[str, object]:
        jobs = []
        for ag_id, job in self.services.active.items():
            ag = job.agreement.record
            jobs.append({"agreement_id": ag_id.hex(), "buyer": peer_id_from_public(ag.buyer), "state": job.phase,
                         "seconds": job.metered_ms / 1000, "amount_micros": job.amount_micros,
                         "countersigned_micros": job.cosigned_micros})
        offer = self.offer.record if self.offer else None
        return {
            "peer_id": self.setup.key.peer_id, "addrs": self.node.addrs(), "accepting": self.accepting,
            "reachability": self.node.reachability,
            "offer": None if offer is None else {
                "seq": offer.seq, "expires_at_ms": offer.expires_at_ms, "gpus": [g.model for g in offer.capacity.gpus],
                "free_gpus": len(offer.free.gpus), "cpu_millis": offer.capacity.cpu_millis,
                "free_cpu_millis": offer.free.cpu_millis, "memory_mib": offer.capacity.memory_mib,
                "prices": {"gpu_micros_per_s": dict(offer.prices.gpu_micros_per_s),
                           "cpu_core_micros_per_s": offer.prices.cpu_core_micros_per_s,
                           "memory_gib_micros_per_s": offer.prices.memory_gib_micros_per_s}},
            "jobs": jobs, "earned_micros": self.earned_micros, "last_errors": list(self.errors),
            "connected_peers": len(self.node.connected_peers()), "owner": owner_status(self.owner),
        }


async def close_open_agreements(store: AsyncStore, key: NodeKey) -> int:
    """Rule 1: agreements a crash left open get a closing receipt (claims nothing new)."""
    closed = 0
    for chain in await store.open_agreements(key.public):
        agreement = signed_from_wire(chain.agreement, Agreement)
        receipts = [signed_from_wire(r, Receipt) for r in chain.receipts]
        cosigned = next((r.record for r in reversed(receipts) if r.is_complete), None)
        last = receipts[-1] if receipts else None
        record = closing_receipt(agreement, last.record if last else None,
                                 last.record_id if last else agreement.record_id, cosigned, PROVIDER_RESTART,
                                 wall_ms())
        await store.append_receipt(sign_record(record, key))
        closed += 1
    if closed:
        log.warning("closed %d agreement(s) left open by an earlier run (reason %s)", closed, PROVIDER_RESTART)
    return closed


@asynccontextmanager
async def open_provider(setup: ProviderSetup, *, handlers: dict[str, object] | None = None,
                        topics: dict[str, object] | None = None, dht_mode: str = "server",
                        announce: Announce | None = None,
                        disk_support: Callable[[], str | None] = disk_support_problem,
                        ) -> AsyncIterator[ProviderRuntime]:
    """``disk_support`` says why job disks cannot work here (Rule 0); a test passes its own."""
    key = setup.key
    check_capacity(setup.cpu_millis, setup.memory_mib, machine_cpu_millis(), machine_memory_mib())  # Rule 2
    if (problem := disk_support()) is not None:
        raise ConfigError(f"cannot provide: {problem}", reason="no_job_disks")
    setup.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # L3: the data directory is private
    lock = take_daemon_lock(setup.data_dir)  # one daemon per data dir (node.daemonlock)
    try:
        key_lock = take_key_lock(key.peer_id, setup.key_lock_dir)  # one daemon per key on this host (Rule 0)
    except BaseException:
        lock.close()
        raise
    try:
        client = await trio.to_thread.run_sync(connect)
        engine = Engine(client)
        facts = await engine.call(probe_engine, client, what="probe engine")
        disk_dir = setup.data_dir / "disks"
        # Only labels on objects of this node are ever opened as lock files (node.daemonlock Rule 4):
        # another node's markers are not ours to judge, and are left to that node's daemon.
        ours = await engine.call(_owners_of_node, engine.api, key.peer_id, what="list this node's objects")
        reaped = await reap_orphans(engine, key.peer_id, disk_dir=disk_dir,
                                    owner_alive=lambda owner: owner != lock.label
                                    and (owner not in ours or lock_alive(owner)))
        if reaped.spared:  # two daemons with one key would bill, and once reaped, each other's jobs
            raise ConfigError(f"another suanli provider with this key ({key.peer_id}) is running on this Docker "
                              f"engine (its lock: {reaped.spared[0]}); stop it, or give this one its own key",
                              reason="already_running", path=reaped.spared[0])
    except BaseException:
        key_lock.close()
        lock.close()
        raise
    inventory = await trio.to_thread.run_sync(gpu_inventory)
    if not inventory.gpus:
        log.info("no GPU offered: %s", inventory.reason)
    gpus = offered_gpus(list(inventory.gpus), setup.terms)
    cpu = setup.cpu_millis or machine_cpu_millis()
    mem = setup.memory_mib or machine_memory_mib() * 3 // 4
    # H4: by default half of what is free once the reserve, the uploads in flight and the kept buyer images
    # (all on this disk, none counted in disk_mib) are taken off.
    disk = setup.disk_mib or default_disk_mib(*await trio.to_thread.run_sync(disk_room, setup.data_dir),
                                              IMAGE_DISK_BUDGET_BYTES + setup.images.cache_mib * (1 << 20))
    ledger = CapacityLedger(tuple(g.uuid for g in gpus), cpu, mem, setup.terms.limits.max_concurrent_jobs,
                            disk_mib=disk)
    policy = replace(setup.policy, max_cpus_millicores=cpu, max_memory_mib=mem, max_disk_mib=disk,
                     max_duration_ms=setup.terms.limits.max_duration_s * 1000, disk_dir=str(disk_dir),
                     owner_lock=lock.label)
    async with AsyncExitStack() as stack:
        stack.callback(lock.close)
        stack.callback(key_lock.close)
        await engine.call(client.api.create_volume, name=lock.marker_volume(), what="marker volume",
                          labels={LABEL_NODE: key.peer_id, LABEL_ROLE: "daemon", LABEL_OWNER: lock.label})
        stack.push_async_callback(_remove_marker, engine, lock.marker_volume())
        store = await stack.enter_async_context(open_store(setup.data_dir / "node.db"))
        await close_open_agreements(store, key)
        runtime_box: list[ProviderRuntime] = []

        async def on_agreement(agreement: Signed[Agreement], proposal: Signed[Proposal],
                               allocation: Allocation) -> None:
            await store.put_proposal(proposal)
            await store.put_agreement(agreement)
            job = services.active[agreement.record_id] = ActiveJob(agreement, proposal, allocation)
            services_nursery.start_soon(_close_if_never_started, job, setup.start_timeout_s, EXPIRED)
            if runtime_box:
                runtime_box[0].changed.set()

        async def _close_if_never_started(job: ActiveJob, after_s: float, reason: str) -> None:
            with trio.move_on_after(after_s):
                await job.stop_requested.wait()
            if job.started or job.finished.is_set():
                return
            job.started = True  # no job stream may start it now
            ag = job.agreement
            record = closing_receipt(ag, None, ag.record_id, None, job.stop_reason or reason, wall_ms())
            await store.append_receipt(sign_record(record, key))
            job.finished.set()
            on_finished(job, record, False)

        def on_finished(job: ActiveJob, final: Receipt | None, final_cosigned: bool) -> None:
            ag_id = job.agreement.record_id
            services.active.pop(ag_id, None)
            ledger.release(ag_id)
            if runtime_box:
                rt = runtime_box[0]
                rt.earned_micros += final.amount_micros if final is not None and final_cosigned else job.cosigned_micros
                rt.changed.set()
                if services.images is not None:  # a job may have brought an image: the offer names it
                    services_nursery.start_soon(services.images.keep_offered, lambda: rt.changed.set())
            reason = final.reason if final is not None else None
            outcome = (STOPPED_COUNTERSIGNING if reason == BUYER_UNRESPONSIVE
                       else NEVER_STARTED if reason == EXPIRED else COMPLETED)
            services_nursery.start_soon(store.record_outcome, job.agreement.record.buyer, outcome, ag_id, wall_ms())

        def unstarted(buyer: bytes) -> int:  # market.deal Rule 5: what a buyer holds and has not started
            return sum(1 for job in services.active.values() if job.agreement.record.buyer == buyer and not job.started)

        market = ProviderMarket(key=key, ledger=ledger, gpus=gpus, on_agreement=on_agreement, hold_ms=setup.hold_ms,
                                unstarted=unstarted)
        services = JobServices(key=key, store=store, engine=engine, facts=facts, policy=policy,
                               gpus={g.uuid: g for g in inventory.gpus}, node_id=key.peer_id, active={},
                               on_finished=on_finished, image_dir=setup.data_dir / "images")
        services.images = ProviderImages.open(engine, services.image_dir, setup.images, services.images_in_use)
        market.check_image = services.images.verdict  # market.negotiation Rule 4
        max_job_s = setup.terms.limits.max_duration_s + 600
        all_handlers: dict[str, object] = {
            NEGOTIATE_PROTOCOL: serve_framed(market.handle, protocol=NEGOTIATE_PROTOCOL, stream_budget_s=60),
            jobwire.PROTOCOL_ID: serve_framed(partial(serve_job, services), protocol=jobwire.PROTOCOL_ID,
                                              stream_budget_s=max_job_s, max_frame_bytes=jobwire.MAX_FRAME_BYTES),
            **(handlers or {}),
        }
        config = HostConfig(key=key, listen=setup.listen, bootstrap=setup.bootstrap, dht_mode=dht_mode,  # type: ignore[arg-type]
                            handlers=all_handlers, topics=topics or {}, require_bootstrap=False,  # type: ignore[arg-type]
                            relays=())  # issue 15: while not public, reserve on the bootstrap hosts
        node = await stack.enter_async_context(open_host(config))
        services_nursery = await stack.enter_async_context(trio.open_nursery())
        runtime = ProviderRuntime(setup, node, store, market, services, ledger, gpus,
                                  seq=await store.max_offer_seq(key.public))
        runtime_box.append(runtime)
        node.relay.on_change.append(lambda: runtime.changed.set())  # issue 15: new circuit addresses, new offer
        if setup.owner is not None:  # its first reading decides the first offer
            await services_nursery.start(partial(watch_owner, device_globs=setup.owner_devices), runtime, setup.owner)
        await runtime.publish_if_needed(announce, force=True)
        services_nursery.start_soon(_publisher, runtime, announce)
        services_nursery.start_soon(services.images.keep_collected, lambda: runtime.changed.set())
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True):
                await _shutdown(runtime, announce)
            services_nursery.cancel_scope.cancel()


def _owners_of_node(api, node_id: str) -> frozenset[str]:  # type: ignore[no-untyped-def]
    """Blocking: the owner labels (lock files) on this node's containers and volumes."""
    label = {"label": f"{LABEL_NODE}={node_id}"}
    objects = api.containers(all=True, filters=label) + (api.volumes(filters=label).get("Volumes") or [])
    return frozenset(o for obj in objects if (o := (obj.get("Labels") or {}).get(LABEL_OWNER)) is not None)


async def _remove_marker(engine: Engine, name: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        try:
            await engine.call(engine.api.remove_volume, name, force=True, what="remove marker volume")
        except SuanliError as exc:  # the next start reaps it
            log.warning("marker volume %s not removed: %s", name, exc)


async def _publisher(runtime: ProviderRuntime, announce: Announce | None) -> None:
    """Re-issue the offer when free capacity changes, and at half-life (market.offers Rule 2)."""
    while True:
        with trio.move_on_after(max(1.0, runtime.setup.terms.ttl_ms / 4000)):
            await runtime.changed.wait()
        runtime.changed = trio.Event()
        await runtime.publish_if_needed(announce)


async def _shutdown(runtime: ProviderRuntime, announce: Announce | None) -> None:
    runtime.accepting = runtime.market.accepting = False  # market.deal Rule 6: no new bid on any offer
    jobs = list(runtime.services.active.values())
    for job in jobs:
        job.request_stop(PROVIDER_SHUTDOWN)
    with trio.move_on_after(runtime.setup.shutdown_grace_s):
        for job in jobs:
            await job.finished.wait()
    with trio.move_on_after(5):
        await runtime.publish_if_needed(announce, force=True)  # withdraw: nothing free
    log.info("provider %s stopped", runtime.setup.key.peer_id)

