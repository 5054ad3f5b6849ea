"""The provider's images (a trio shell, issue 19): a registry image checked before the bid and pulled
before the job's clock starts; the image cache and the layer store that the offer and layer-aware
uploads draw on. The rules of a reference, a manifest and a pull are sandbox.registry's; the cache's
are sandbox.image_gc's; the negotiation's are market.negotiation Rule 4.

Rule 1: the check before a bid is bounded (``CHECK_TIMEOUT_S``: a buyer waits for the answer) and
fetches only manifests, never a layer; its answer is remembered per reference (``MAX_REMEMBERED``):
a manifest named by its digest cannot change, so a second proposal for the same image costs nothing.
A failed check is not remembered: the registry may be back in a moment.
Rule 2: the pull runs after the agreement and before the job's clock starts (the job is ``preparing``),
so it is never billed; a pull that fails ends the job before it runs, with a final receipt that claims
nothing and the reason both sides record (``pull_failed``, ``image_mismatch``, ...).
Rule 3: the pull fetches the manifest the agreement names, and the engine must then report that
digest and the manifest's config digest as the image's id (sandbox.registry); nothing else runs.
Rule 4: before a pull the cache makes room within its quota, least recently used first, never
evicting an image a job uses (``in_use``: the agreed image ids, including one being pulled) nor one
Suanli did not bring in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from market.deal import ImageVerdict, Refuse
from market.negotiation import BAD_PROPOSAL, IMAGE_TOO_LARGE, IMAGE_UNAVAILABLE, REGISTRY_NOT_ALLOWED
from node.config import ImageSettings
from node.jobcontainer import wall_ms
from p2p.errors import SuanliError
from p2p.market_records import MAX_OFFER_IMAGES, Agreement, JobSpec
from sandbox.engine import Engine
from sandbox.errors import ImageError
from sandbox.image_gc import collect_buyer_images, held_digests, make_room, record_pulled, record_used
from sandbox.registry import ImageRef, RegistryPolicy, ResolvedImage, check_allowed, parse_ref, pull, resolve

if TYPE_CHECKING:
    from sandbox.layerstore import LayerStore

log = logging.getLogger("suanli.node.images")

CHECK_TIMEOUT_S = 20.0  # Rule 1: the buyer's negotiation waits for it
COLLECT_INTERVAL_S = 60.0  # Rule 4: the cache is trimmed to its quota this often (and its offer list read)
MAX_REMEMBERED = 256  # Rule 1: resolved references kept
MIB = 1 << 20
_REFUSALS = {"registry_not_allowed": REGISTRY_NOT_ALLOWED, "image_too_large": IMAGE_TOO_LARGE,
             "image_tag": BAD_PROPOSAL}


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 100_000_000 else f"{nbytes / 1e6:.1f} MB"


@dataclass
class ProviderImages:
    """The provider's registry policy, image cache and layer store (Rules 1-4)."""

    engine: Engine
    image_dir: Path | None
    settings: ImageSettings = field(default_factory=ImageSettings)
    in_use: Callable[[], frozenset[str]] = frozenset
    layers: LayerStore | None = None
    _resolved: OrderedDict[str, ResolvedImage] = field(default_factory=OrderedDict)
    offered: tuple[bytes, ...] = ()  # the digests the signed offer lists (``refresh_offered``)

    @classmethod
    def open(cls, engine: Engine, image_dir: Path | None, settings: ImageSettings,
             in_use: Callable[[], frozenset[str]]) -> ProviderImages:
        layers = None
        if image_dir is not None and settings.layer_store_mib > 0:
            from sandbox.layerstore import LayerStore

            layers = LayerStore(image_dir / "layers", settings.layer_store_mib * MIB)
        return cls(engine, image_dir, settings, in_use, layers)

    @property
    def policy(self) -> RegistryPolicy:
        return RegistryPolicy(allowed=self.settings.allowed_registries,
                              max_image_bytes=min(self.settings.max_image_mib, self.settings.cache_mib) * MIB)

    async def verdict(self, job: JobSpec) -> ImageVerdict:
        """Rule 1: what a bid on this registry image would pull, or why this provider will not."""
        if not self.settings.pull:
            return ImageVerdict(refuse=Refuse(REGISTRY_NOT_ALLOWED, "this provider does not pull images from "
                                              "registries ([images] pull = false)"))
        try:
            ref = parse_ref(job.image)
            resolved = await self._resolve(ref)
        except ImageError as exc:
            reason = _REFUSALS.get(str(exc.fields.get("reason")), IMAGE_UNAVAILABLE)
            return ImageVerdict(refuse=Refuse(reason, str(exc)[:1024]))
        except trio.TooSlowError:
            return ImageVerdict(refuse=Refuse(IMAGE_UNAVAILABLE, f"{job.image}: the registry did not answer within "
                                              f"{CHECK_TIMEOUT_S:.0f} s"))
        manifest = bytes.fromhex(resolved.manifest_digest.removeprefix("sha256:"))
        return ImageVerdict(manifest=manifest, platform=resolved.platform)

    async def _resolve(self, ref: ImageRef) -> ResolvedImage:
        key = str(ref)
        known = self._resolved.get(key)
        if known is not None:
            self._resolved.move_to_end(key)
            return known
        policy = self.policy

        def work() -> ResolvedImage:
            check_allowed(ref, policy)
            return resolve(ref, policy)

        with trio.fail_after(CHECK_TIMEOUT_S):
            # abandon_on_cancel: a registry that hangs past the timeout keeps a thread, never the negotiation
            resolved = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        self._resolved[key] = resolved
        while len(self._resolved) > MAX_REMEMBERED:
            self._resolved.popitem(last=False)
        return resolved

    async def pull(self, agreement: Agreement, status: Callable[[str, str], None],
                   claim: Callable[[str], None]) -> str:
        """Rules 2-4: the agreed manifest, pulled and checked; the image id. ``claim`` marks the image id
        as in use before any room is made for it, so no collection removes it before the container starts."""
        ref = parse_ref(agreement.job.image)
        try:
            resolved = await self._resolve(ref)  # remembered from the bid, unless the daemon restarted since
        except trio.TooSlowError:  # the registry's fault, never the buyer's upload (node.jobupload)
            raise ImageError(f"{ref}: the registry did not answer within {CHECK_TIMEOUT_S:.0f} s",
                             reason="registry_unreachable") from None
        wanted = agreement.image_manifest.hex() if agreement.image_manifest is not None else ""
        if resolved.manifest_digest != f"sha256:{wanted}":
            raise ImageError(f"{ref}: the registry now resolves to {resolved.manifest_digest}, not the agreed "
                             f"sha256:{wanted}", reason="image_mismatch")
        claim(resolved.config_digest)
        client = self.engine.client
        held = await self.engine.call(_held_with_digest, client, resolved, what="find image")
        if held is not None:
            if self.image_dir is not None:
                await self.engine.call(record_used, self.image_dir, held, wall_ms(), what="note image use")
            status("pulling_image", f"{ref.name}: cached on this provider")
            return held
        if self.image_dir is not None:
            fits = await self.engine.call(make_room, client, self.image_dir, resolved.total_bytes,
                                          self.in_use() | {resolved.config_digest}, self.settings.cache_mib * MIB,
                                          what="make room for an image")
            if not fits:
                raise SuanliError(f"{ref.name}: no room for {_gb(resolved.total_bytes)} in this provider's image "
                                  f"cache of {self.settings.cache_mib} MiB (images in use stay)", reason="disk_full")
        status("pulling_image", f"{ref.name}: {_gb(resolved.total_bytes)}")
        token = trio.lowlevel.current_trio_token()

        def progress(line: str) -> None:  # from the pull's thread
            try:
                trio.from_thread.run_sync(status, "pulling_image", line, trio_token=token)
            except (trio.RunFinishedError, trio.Cancelled):
                pass

        image_id: str = await self.engine.call(pull, client, resolved, progress, what="pull image", own_thread=True)
        if self.image_dir is not None:
            names = sorted({ref.digest, resolved.manifest_digest})
            await self.engine.call(record_pulled, self.image_dir, client, image_id, names, wall_ms(),
                                   what="note a pulled image")
        return image_id

    async def refresh_offered(self) -> bool:
        """Read the digests the offer advertises (sandbox.image_gc: most recently used first, at most
        MAX_OFFER_IMAGES); True when they changed (the caller re-issues the offer)."""
        if self.image_dir is None:
            return False
        names: tuple[str, ...] = await trio.to_thread.run_sync(held_digests, self.image_dir, MAX_OFFER_IMAGES)
        offered = tuple(bytes.fromhex(n.removeprefix("sha256:")) for n in names)
        changed, self.offered = offered != self.offered, offered
        return changed

    async def keep_offered(self, changed: Callable[[], None]) -> None:
        """``refresh_offered``, then ``changed`` when the list moved; a failure is only logged."""
        try:
            if await self.refresh_offered():
                changed()
        except OSError as exc:
            log.warning("images held not read: %s", exc)

    async def keep_collected(self, changed: Callable[[], None], interval_s: float = COLLECT_INTERVAL_S) -> None:
        """Rule 4, at start and then every ``interval_s``: images over the cache's quota are removed, least
        recently used first, and the offer's list of held images is read again (``changed`` when it moved)."""
        if self.image_dir is None:
            return
        while True:
            try:
                await self.engine.call(collect_buyer_images, self.engine.client, self.image_dir, self.in_use(),
                                       self.settings.cache_mib * MIB, what="collect buyer images")
            except (SuanliError, OSError) as exc:
                log.warning("buyer images not collected: %s", exc)
            await self.keep_offered(changed)
            await trio.sleep(interval_s)


def _held_with_digest(client: object, resolved: ResolvedImage) -> str | None:
    """The image id when the engine holds this manifest already (pulled before, by us or not)."""
    import docker.errors

    try:
        attrs = client.api.inspect_image(resolved.config_digest)  # type: ignore[attr-defined]
    except docker.errors.NotFound:
        return None
    if attrs.get("Id") != resolved.config_digest:
        return None
    wanted = replace(resolved.ref, digest=resolved.manifest_digest).repo_digest  # as the engine lists it
    return resolved.config_digest if wanted in (attrs.get("RepoDigests") or []) else None
