"""The buyer's request: one job as a typed value, checked completely when it is built (issue 14 item 3).

``BuyRequest`` is what ``suanli run``'s options and the buyer agent's run requests become, and what a
Python program builds to buy a job (node.buyer: ``buy`` on a joined node, ``run_once`` to join, buy and
leave)::

    request = BuyRequest.build(["echo", "hi"], image="sha256:<64 hex>", cpus=0.5, memory="256m")

Rule 1 (issue 17 item 5): ``request_from_options`` (and ``build``) check every field before anything is
created or sent: the ranges of node.config.RUN_RANGES, sizes, env names, the image pin, the input and
output directories. A mistake is a SuanliError of one line that names the option. Nothing large is read
here: an image archive is read when the job runs (``choose_image``).
Rule 2: ``DEFAULTS`` are ``suanli run``'s defaults (node.cli declares them for --help; a test checks
that the two agree).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config import check_run_numbers
from node.outputs import check_output_dir
from p2p.errors import SuanliError
from p2p.market_records import ResourceRequest
from sandbox.plan import MAX_DISK_MIB, MIN_DISK_MIB

_SIZE = re.compile(r"^(\d+)(?:\.(\d+))?([kKmMgG]?)(i?[bB])?$")
_UNIT_SHIFT = {"": -20, "k": -10, "m": 0, "g": 10}
_PINNED = re.compile(r"sha256:[0-9a-f]{64}")

DEFAULTS: dict[str, Any] = {
    "image": None, "image_archive": None, "gpus": 0, "gpu_model": None, "gpu_memory": None, "cpus": 1.0,
    "memory": "512m", "disk": "1g", "max_price": 10_000, "max_duration": 600, "max_exposure": None,
    "input": None, "output": None, "force": False, "preemptible": False, "on_preempt": "fail",
    "env": None, "wait": 3.0, "candidates": 5,
    "negotiate_timeout": 10.0,
}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to look for a provider: offers collected for ``wait_s``, then up to ``candidates``
    providers tried best first, each given ``negotiate_timeout_s`` to answer."""

    wait_s: float = 3.0
    candidates: int = 5
    negotiate_timeout_s: float = 10.0


@dataclass(frozen=True)
class BuyRequest:
    """One job to buy. ``image`` is a pinned id, or None to use the id of ``image_archive`` (a ``docker
    save`` file shipped when the provider lacks the image). ``max_exposure_micros`` None: the buyer's
    ``buyer.toml``, else the default (node.buyer_config). ``inputs`` appear in /io/in, /io/out is written
    to ``outputs`` (``force``: outputs may replace files of the same name)."""

    command: tuple[str, ...]
    image: str | None
    resources: ResourceRequest
    max_price_micros_per_s: int
    max_duration_s: int
    image_archive: Path | None = None
    max_exposure_micros: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    inputs: Path | None = None
    outputs: Path | None = None
    force: bool = False
    accepts_preemption: bool = False  # market.deal Rule 7: --preemptible
    on_preempt: str = "fail"  # node.buyer Rule 3: "retry" runs the job again on another provider
    preempt_retries: int = 2
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def build(cls, command: Sequence[str], **options: Any) -> BuyRequest:
        """A request from ``suanli run``'s option names (``cpus=0.5``, ``memory="1.5g"``, ``env=["K=V"]``,
        ``input="./data"``...), the others at their defaults; checked as Rule 1 says."""
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise SuanliError(f"unknown option {unknown[0]!r} (known: {', '.join(sorted(DEFAULTS))})")
        return request_from_options({**DEFAULTS, **options}, command)


def request_from_options(options: Mapping[str, Any], command: Sequence[str]) -> BuyRequest:
    """Rule 1: ``suanli run``'s options (``vars(args)``, or an agent request's fields) as a BuyRequest."""
    if not command or not all(isinstance(part, str) for part in command):
        raise SuanliError("give the command to run after --, e.g. suanli run --image sha256:... -- echo hi")
    check_run_numbers(dict(options))
    memory_mib = parse_memory_mib(options["memory"])
    disk_mib = parse_disk_mib(options.get("disk", "1g"))
    env = parse_env(options.get("env") or [])
    output = Path(options["output"]) if options.get("output") else None
    if output is not None:
        check_output_dir(output, force=bool(options.get("force")))
    inputs = Path(options["input"]) if options.get("input") else None
    if inputs is not None and not inputs.is_dir():
        raise SuanliError(f"--input {inputs}: not a directory")
    archive = Path(options["image_archive"]) if options.get("image_archive") else None
    if archive is not None and not archive.is_file():
        raise SuanliError(f"--image-archive {archive}: no such file")
    image = options.get("image")
    if archive is not None and image and "@" in image:
        raise SuanliError("--image-archive ships an image; a registry image (REGISTRY/REPO@sha256:...) is pulled "
                          "by the provider: give one or the other")
    if archive is None or image:
        image = check_image_pin(image)  # canonical: a registry reference as the engine will name it
    resources = ResourceRequest(gpus=options["gpus"], gpu_model=options.get("gpu_model"),
                                min_gpu_memory_mib=options.get("gpu_memory") or 0, min_compute_capability=None,
                                cpu_millis=int(options["cpus"] * 1000), memory_mib=memory_mib, disk_mib=disk_mib)
    return BuyRequest(
        command=tuple(command), image=image, resources=resources,
        max_price_micros_per_s=options["max_price"], max_duration_s=options["max_duration"], image_archive=archive,
        max_exposure_micros=options.get("max_exposure"), env=env, inputs=inputs, outputs=output,
        force=bool(options.get("force")), accepts_preemption=bool(options.get("preemptible")),
        on_preempt=_on_preempt(options.get("on_preempt") or "fail"),
        retry=RetryPolicy(options["wait"], options["candidates"], options["negotiate_timeout"]))


def parse_memory_mib(text: str) -> int:
    """``--memory``: bytes, or k/m/g (binary units, as Docker's), fractions allowed (``1.5g``); whole MiB,
    rounded down. Exact arithmetic: a float would overflow or round a huge value."""
    m = _SIZE.match(text.strip())
    if not m or len(text) > 64:
        raise SuanliError(f"--memory {text!r}: give a size such as 512m, 1.5g or 2g")
    whole, frac, unit = m.group(1), m.group(2) or "", m.group(3).lower()
    scaled = int(whole + frac)  # the value times 10**len(frac)
    shift = _UNIT_SHIFT[unit]
    mib: int = (scaled << shift if shift >= 0 else scaled >> -shift) // 10 ** len(frac)
    if mib < 6:
        raise SuanliError(f"--memory {text!r} is too small (at least 6m)")
    if mib > 16_777_216:  # L6: as the provider's limits.memory_mib, so a proposal always encodes
        raise SuanliError(f"--memory {text!r} is too large (at most 16384g)")
    return mib


def parse_disk_mib(text: str) -> int:
    """``--disk``: the size of the job's /io filesystem (issue 13 H4), in whole MiB, within the planner's
    floor and the provider's ceiling (sandbox.plan: MIN_DISK_MIB, MAX_DISK_MIB). A size string, so it is
    checked here like --memory, not in RUN_RANGES (which holds the plain numbers)."""
    m = _SIZE.match(text.strip())
    if not m or m.group(2) or m.group(3).lower() not in ("m", "g"):
        raise SuanliError(f"--disk {text!r}: give a size such as 256m or 20g")
    mib = int(m.group(1)) * (1024 if m.group(3).lower() == "g" else 1)
    if not MIN_DISK_MIB <= mib <= MAX_DISK_MIB:
        raise SuanliError(f"--disk {text!r} is out of range ({MIN_DISK_MIB}m to {MAX_DISK_MIB >> 10}g)")
    return mib


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SuanliError(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def _on_preempt(value: str) -> str:
    if value not in ("fail", "retry"):
        raise SuanliError(f"--on-preempt {value!r}: expected fail or retry")
    return value


def check_image_pin(image: str | None) -> str:
    """A pinned local id, or a registry image pinned by digest in its canonical form (market.negotiation
    Rule 4; sandbox.registry parses it); SuanliError with one line otherwise."""
    if not image:
        raise SuanliError("give --image sha256:<id> (an image the provider has), --image REGISTRY/REPO@sha256:"
                          "<digest> (pulled by the provider) and/or --image-archive FILE")
    if _PINNED.fullmatch(image):
        return image
    if "@" not in image:
        raise SuanliError(f"--image {image!r}: pin the image: sha256:<64 hex> for an image the provider has (see "
                          "`docker images --no-trunc`), or REGISTRY/REPO@sha256:<64 hex> for a registry image; a "
                          "tag could mean another image on the provider's machine", reason="image_tag")
    from sandbox.registry import parse_ref

    try:
        return str(parse_ref(image))
    except SuanliError as exc:
        raise SuanliError(str(exc), reason=exc.fields.get("reason", "image_ref")) from None


@dataclass(frozen=True)
class ImageChoice:
    image_id: str
    archive: bytes | None
    archive_sha256: bytes | None
    layers: tuple[bytes, ...] = ()  # the archive's layers (diff ids), named in job.start (p2p.job_wire Rule 3)


def choose_image(image: str | None, archive_path: str | Path | None) -> ImageChoice:
    """The image to propose, with the archive's bytes, digest and layers when one is shipped (read here,
    inspected once)."""
    import io

    from p2p.job_wire import start_layers
    from sandbox.archive import inspect_archive

    if archive_path and image and "@" in image:
        raise SuanliError("--image-archive ships an image; a registry image (REGISTRY/REPO@sha256:...) is pulled "
                          "by the provider: give one or the other")
    if archive_path:
        try:
            data = Path(archive_path).read_bytes()
        except OSError as exc:
            raise SuanliError(f"--image-archive {archive_path}: {exc.strerror}") from exc
        plan = inspect_archive(io.BytesIO(data))
        digests = plan.digests
        ids = digests.image_ids()
        if image and image not in ids:
            raise SuanliError(f"--image {image} is not the image in {archive_path} ({', '.join(sorted(ids))})")
        chosen = image or digests.config_digest
        return ImageChoice(chosen, data, bytes.fromhex(digests.archive_sha256.split(":", 1)[1]),
                           start_layers(plan.diff_ids))
    return ImageChoice(check_image_pin(image), None, None)
