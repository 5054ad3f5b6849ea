"""The provider's configuration: one TOML file, checked completely before anything starts.

Rule 1: a configuration error is one line that names the key and the problem
(``config.toml: prices.cpu_core_micros_per_s: expected a whole number in 0..100000000, got -3``).
Rule 2: unknown keys are errors (a typo must not silently fall back to a default).
Rule 3: every whole-number setting has a range (``RANGES``; a key not listed there gets
``0..DEFAULT_MAX``), written in ``EXAMPLE`` beside the key. The ranges are chosen so that nothing derived
from them overflows: the most one job can cost (every price at its maximum, the largest offer, the
longest job) stays below 2^63 micro-credits, and ``offer_ttl_s * 1000`` added to a millisecond clock
stays far below 2^64.
``EXAMPLE`` is what ``suanli provide --init-config PATH`` writes, with the data directory in force
(``$SUANLI_HOME``, else ``$XDG_DATA_HOME/suanli``, else ``~/.local/share/suanli``); the tests load it.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from market.offers import ProviderTerms
from node.owner_prefs import OwnerPrefs, parse_owner
from node.paths import data_dir as default_data_dir
from p2p.errors import ConfigError
from p2p.listen import parse_listen_addr
from p2p.market_records import Limits, Prices, ReceiptTerms
from sandbox.plan import MAX_DISK_MIB

EXAMPLE = '''\
# Suanli provider configuration (suanli provide --config THIS_FILE).
# Money is in micro-credits (1 credit = 1,000,000), time in milliseconds unless a name says _s.
# Every number is a whole number; "lo..hi" beside a key is its allowed range.

# Where the node keeps its key, database and control socket.
data_dir = "~/.local/share/suanli"
# The node's Ed25519 key; created on first start when missing. Default: <data_dir>/node.key
# key = "~/.local/share/suanli/node.key"

# libp2p listen addresses. Port 0 lets the OS choose.
listen = ["/ip4/0.0.0.0/tcp/0"]
# Bootstrap peers: full multiaddrs ending in /p2p/<peer id>.
bootstrap = []

[prices]
# Per second, for each unit allocated to a job. Each price: 0..100000000.
cpu_core_micros_per_s = 50     # 0..100000000
memory_gib_micros_per_s = 10   # 0..100000000

[prices.gpu_micros_per_s]
# One line per GPU model you sell, exactly as NVML names it. A GPU without a price is not offered.
# Each price: 0..100000000.
# "NVIDIA GeForce RTX 4090" = 600

[limits]
max_duration_s = 3600          # 1..2592000 (30 days); longest job accepted
max_concurrent_jobs = 2        # 1..1024
cpu_millis = 0                 # 0..1048576; CPU offered, in millicores; 0 = all cores
memory_mib = 0                 # 0..16777216; memory offered; 0 = three quarters of this machine's memory
disk_mib = 0                   # 0..1073741824; scratch disk offered for jobs' /io; 0 = half the data dir's free
                               # disk after a reserve (1 GiB or 5 %) and the image budgets (8 + 10 GiB)
# Images allowed: image ids or registry manifest digests ("sha256:..."); empty = any pinned image.
allowed_images = []
offer_ttl_s = 120              # 10..86400; how long each signed offer lives; it is re-issued at half-life
start_window_s = 30            # 5..600; an agreement whose job has not started by then is closed, its capacity freed

[receipts]
interval_ms = 1000             # 100..60000; one co-signed receipt per interval
countersign_timeout_ms = 3000  # 100..600000; pause the job when the buyer's countersignature is this late
grace_ms = 5000                # 0..600000; then stop it after this much longer
exposure_cap_micros = 50000    # 0..1000000000000000; the most the job may run ahead of the buyer's signatures

[sandbox]
# "runsc" runs jobs under gVisor when the engine has it registered; empty = Docker's default (runc).
runtime = ""
pids_limit = 256               # 16..4194304
log_rate_bytes_per_s = 65536   # 1024..104857600; a job's log lines beyond this rate are dropped, with a note
log_burst_bytes = 262144       # 1024..1073741824; what a job may log at once before the rate applies

[images]
# Registry images (docs/SANDBOX.md, "Images from registries"): a buyer names REGISTRY/REPO@sha256:<digest>,
# never a tag; you pull it before the job's clock starts, and only its digest may run.
pull = true                    # false = run only images you hold or buyers upload
allowed_registries = []        # e.g. ["ghcr.io", "registry.example.com:5000"]; [] = any public registry
                               # (a loopback or private address only when listed here)
max_image_mib = 20480          # 1..1048576; the largest image pulled, from its manifest, before any layer
cache_mib = 10240              # 1024..16777216; pulled and uploaded images kept (least recently used go first)
layer_store_mib = 4096         # 0..16777216; layers of uploaded archives kept, so a buyer sends only new ones

[dashboard]
# The operator's web dashboard (docs/DASHBOARD.md), on 127.0.0.1 only; `suanli dashboard` prints its URL.
enabled = true
port = 8742                    # 0..65535; 0 = any free port (if this one is taken, a free one is used)

# Owner first (docs/OWNER.md): uncomment [owner] to sell only the time you do not use this machine.
# Without it the machine is sold around the clock.
# [owner]
# idle_s = 300                 # 0..86400; sell only after this long without keyboard, mouse or terminal use
# input = true                 # input and terminal activity counts as use
# foreign_gpu = true           # a GPU process that is not a job's (a game) counts as use
# cpu_busy_pct = 0             # 0..100; other programs' CPU above this % of the machine counts as use; 0 = off
# exclusive_apps = ["steam"]   # while one of these runs, no job runs (names as `ps -e` shows them)
# exclusive_gpu_apps = ["blender"]  # while one of these runs, no GPU job runs
# sell_on_battery = false      # sell while running on battery
# gpu_max_temp_c = 0           # 0..150; a GPU hotter than this counts as in use; 0 = off
# notice_s = 30                # 0..3600; a job frozen by your return is stopped (owner_preempt) after this
# on_return = "stop"           # "stop": stop after notice_s; "pause": hold it frozen up to max_paused_s
# max_paused_s = 600           # 0..86400; the longest a frozen job is held with on_return = "pause"
# poll_ms = 250                # 50..10000; how often the signals are read
# [owner.schedule]             # local time; an end before its start crosses midnight; [] = not that day
# all = ["00:00-24:00"]        # every day without its own line
# sat = ["22:00-09:00"]        # e.g. a cafe: Saturday from closing at 22:00 to opening at 09:00
'''

_REGISTRY_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?|\[[0-9a-f:]+\](:[0-9]{1,5})?")

# Rule 3. Prices at most 100 credits per unit-second: 1,048 cores + 16 TiB + 64 GPUs at that price for
# 30 days is about 4.5e18 micro-credits, below 2^63 (SQLite's integers) and 2^64 (the wire's U64).
MAX_PRICE = 100_000_000
DEFAULT_MAX = 1_000_000_000_000
RANGES: dict[str, tuple[int, int]] = {
    "prices.cpu_core_micros_per_s": (0, MAX_PRICE),
    "prices.memory_gib_micros_per_s": (0, MAX_PRICE),
    "prices.gpu_micros_per_s.*": (0, MAX_PRICE),
    "limits.max_duration_s": (1, 2_592_000),          # 30 days
    "limits.max_concurrent_jobs": (1, 1024),
    "limits.cpu_millis": (0, 1_048_576),              # 1,048 cores
    "limits.memory_mib": (0, 16_777_216),             # 16 TiB
    "limits.disk_mib": (0, MAX_DISK_MIB),             # 1 PiB, as `suanli run --disk`
    "limits.offer_ttl_s": (10, 86_400),               # a day
    "limits.start_window_s": (5, 600),
    "receipts.interval_ms": (100, 60_000),
    "receipts.countersign_timeout_ms": (100, 600_000),
    "receipts.grace_ms": (0, 600_000),
    "receipts.exposure_cap_micros": (0, 1_000_000_000_000_000),
    "sandbox.pids_limit": (16, 4_194_304),            # the kernel's PID_MAX_LIMIT
    "sandbox.log_rate_bytes_per_s": (1024, 104_857_600),  # 100 MiB/s
    "sandbox.log_burst_bytes": (1024, 1 << 30),
    "dashboard.port": (0, 65_535),
    "images.max_image_mib": (1, 1_048_576),           # 1 TiB
    "images.cache_mib": (1024, 16_777_216),
    "images.layer_store_mib": (0, 16_777_216),
}

# Rule 3 for the buyer: `suanli run`'s numeric options (argparse has checked their types; the agent's
# request reader has too). Bounds as the provider's, so a proposal always encodes.
RUN_RANGES: dict[str, tuple[int | float, int | float]] = {
    "gpus": (0, 64),
    "gpu_memory": (0, 16_777_216),
    "cpus": (0.001, 1048.576),
    "max_price": (0, 1_000_000_000_000_000),
    "max_duration": (1, 2_592_000),
    "wait": (0, 600),
    "candidates": (1, 100),
    "negotiate_timeout": (0.1, 600),
}


def check_run_numbers(values: dict[str, Any]) -> None:
    """Each of ``values`` (``vars(args)`` of ``suanli run``) named in RUN_RANGES is a finite number in its
    range (None: not given); otherwise ConfigError, one line naming the option and the range."""
    for name, (lo, hi) in RUN_RANGES.items():
        value = values.get(name)
        if value is None:
            continue
        if type(value) not in (int, float) or not lo <= value <= hi:  # NaN compares False: refused too
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag}: expected a number in {lo}..{hi}, got {_show(value)}", key=flag)


_TOP = {"data_dir", "key", "listen", "bootstrap", "prices", "limits", "receipts", "sandbox", "dashboard", "owner",
        "images"}
_SECTIONS: dict[str, set[str]] = {
    "prices": {"cpu_core_micros_per_s", "memory_gib_micros_per_s", "gpu_micros_per_s"},
    "limits": {"max_duration_s", "max_concurrent_jobs", "cpu_millis", "memory_mib", "disk_mib", "allowed_images",
               "offer_ttl_s", "start_window_s"},
    "receipts": {"interval_ms", "countersign_timeout_ms", "grace_ms", "exposure_cap_micros"},
    "sandbox": {"runtime", "pids_limit", "log_rate_bytes_per_s", "log_burst_bytes"},
    "dashboard": {"enabled", "port"},
    "images": {"pull", "allowed_registries", "max_image_mib", "cache_mib", "layer_store_mib"},
}


@dataclass(frozen=True)
class ImageSettings:
    """``[images]`` (issue 19): registry pulls, the image cache and the layer store (node.jobimages)."""

    pull: bool = True
    allowed_registries: tuple[str, ...] = ()  # host[:port]; empty: any public registry
    max_image_mib: int = 20480
    cache_mib: int = 10240
    layer_store_mib: int = 4096


@dataclass(frozen=True)
class ProviderConfig:
    path: Path
    data_dir: Path
    key_path: Path
    listen: tuple[str, ...]
    bootstrap: tuple[str, ...]
    terms: ProviderTerms
    cpu_millis: int
    memory_mib: int
    runtime: str | None
    pids_limit: int
    extra: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # every whole-number key read (Rule 3)
    disk_mib: int = 0  # 0: at start, sandbox.plan.default_disk_mib of the free disk under data_dir
    log_rate_bytes_per_s: int = 65536
    log_burst_bytes: int = 262144
    start_window_s: int = 30  # issue 13 M3: an unstarted agreement is closed after this
    dashboard_enabled: bool = True  # issue 20: node.dashboard, on 127.0.0.1:dashboard_port
    dashboard_port: int = 8742
    owner: OwnerPrefs | None = None  # issue 18: [owner] (node.owner_prefs); None: sold around the clock
    images: ImageSettings = field(default_factory=ImageSettings)  # issue 19: [images]


class _Reader:
    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path, self.doc = path, doc
        self.checked: dict[str, tuple[int, int]] = {}  # every whole-number key read, with its range

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}", key=key, path=str(self.path))

    def section(self, name: str) -> dict[str, Any]:
        value = self.doc.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, "expected a [table]")
        unknown = set(value) - _SECTIONS[name]
        if unknown:
            raise self.fail(f"{name}.{sorted(unknown)[0]}", "unknown key")
        return value

    def whole(self, table: dict[str, Any], section: str, key: str, default: int, minimum: int = 0,
              *, range_key: str | None = None) -> int:
        """``table[key]`` (or ``default``), a whole number within its range (Rule 3).

        ``minimum`` is kept for callers that predate ``RANGES``; the table's bounds win when both exist.
        """
        name = f"{section}.{key}"
        lo, hi = RANGES.get(range_key or name, (minimum, DEFAULT_MAX))
        self.checked[range_key or name] = (lo, hi)
        value = table.get(key, default)
        if type(value) is not int or not lo <= value <= hi:  # bool is not int here: `true` is refused
            raise self.fail(name, f"expected a whole number in {lo}..{hi}, got {_show(value)}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        return tuple(value)


def _show(value: Any) -> str:
    """A value for a one-line message: a 4,000-digit integer is not worth printing whole."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def load_config(path: str | os.PathLike[str]) -> ProviderConfig:
    cfg_path = Path(path)
    try:
        doc = tomllib.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: no such file; create one with `suanli provide --init-config {cfg_path}`",
                          path=str(cfg_path)) from None
    except OSError as exc:
        raise ConfigError(f"{cfg_path}: {exc.strerror}", path=str(cfg_path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}", path=str(cfg_path)) from exc
    r = _Reader(cfg_path, doc)
    unknown = set(doc) - _TOP
    if unknown:
        raise r.fail(sorted(unknown)[0], "unknown key")
    data = doc.get("data_dir")
    if data is not None and not isinstance(data, str):
        raise r.fail("data_dir", "expected a path")
    data_dir = _expand(data) if data else default_data_dir()
    key = doc.get("key")
    if key is not None and not isinstance(key, str):
        raise r.fail("key", "expected a path")
    listen = r.strings(doc.get("listen", ["/ip4/0.0.0.0/tcp/0"]), "listen")
    if not listen:
        raise r.fail("listen", "needs at least one address")
    for addr in listen:
        try:
            parse_listen_addr(addr)  # issue 17 item 8: p2p.listen Rule 1
        except ConfigError as exc:
            raise r.fail("listen", str(exc)) from None
    bootstrap = r.strings(doc.get("bootstrap", []), "bootstrap")
    for addr in bootstrap:
        if "/p2p/" not in addr:
            raise r.fail("bootstrap", f"{addr!r} must end in /p2p/<peer id>")

    p = r.section("prices")
    gpu_prices = p.get("gpu_micros_per_s", {})
    if not isinstance(gpu_prices, dict):
        raise r.fail("prices.gpu_micros_per_s", "expected a table of model = price")
    for model in gpu_prices:
        r.whole(gpu_prices, "prices.gpu_micros_per_s", model, 0, range_key="prices.gpu_micros_per_s.*")
    prices = Prices(gpu_micros_per_s=dict(gpu_prices),
                    cpu_core_micros_per_s=r.whole(p, "prices", "cpu_core_micros_per_s", 50),
                    memory_gib_micros_per_s=r.whole(p, "prices", "memory_gib_micros_per_s", 10))
    lim = r.section("limits")
    images = r.strings(lim.get("allowed_images", []), "limits.allowed_images")
    for image in images:
        if not (image.startswith("sha256:") and len(image) == 71):
            raise r.fail("limits.allowed_images", f"{image!r} is not a pinned image id or manifest digest "
                         "(sha256:<64 hex>)")
    limits = Limits(max_duration_s=r.whole(lim, "limits", "max_duration_s", 3600, 1),
                    max_concurrent_jobs=r.whole(lim, "limits", "max_concurrent_jobs", 2, 1),
                    allowed_images=images)
    rec = r.section("receipts")
    receipts = ReceiptTerms(interval_ms=r.whole(rec, "receipts", "interval_ms", 1000, 100),
                            countersign_timeout_ms=r.whole(rec, "receipts", "countersign_timeout_ms", 3000, 100),
                            grace_ms=r.whole(rec, "receipts", "grace_ms", 5000, 0),
                            exposure_cap_micros=r.whole(rec, "receipts", "exposure_cap_micros", 50_000))
    sb = r.section("sandbox")
    runtime = sb.get("runtime", "")
    if not isinstance(runtime, str):
        raise r.fail("sandbox.runtime", "expected a runtime name such as \"runsc\"")
    img = r.section("images")
    if type(img.get("pull", True)) is not bool:
        raise r.fail("images.pull", f"expected true or false, got {_show(img.get('pull'))}")
    registries = r.strings(img.get("allowed_registries", []), "images.allowed_registries")
    for host in registries:
        if not _REGISTRY_HOST.fullmatch(host):
            raise r.fail("images.allowed_registries", f"{host!r} is not a registry host (host or host:port)")
    image_settings = ImageSettings(pull=img.get("pull", True), allowed_registries=registries,
                                   max_image_mib=r.whole(img, "images", "max_image_mib", 20480),
                                   cache_mib=r.whole(img, "images", "cache_mib", 10240),
                                   layer_store_mib=r.whole(img, "images", "layer_store_mib", 4096))
    dash = r.section("dashboard")
    if type(dash.get("enabled", True)) is not bool:
        raise r.fail("dashboard.enabled", f"expected true or false, got {_show(dash.get('enabled'))}")
    return ProviderConfig(
        path=cfg_path, data_dir=data_dir, key_path=_expand(key) if key else data_dir / "node.key",
        listen=listen, bootstrap=bootstrap,
        terms=ProviderTerms(prices, limits, receipts, ttl_ms=r.whole(lim, "limits", "offer_ttl_s", 120, 10) * 1000),
        cpu_millis=r.whole(lim, "limits", "cpu_millis", 0), memory_mib=r.whole(lim, "limits", "memory_mib", 0),
        runtime=runtime or None, pids_limit=r.whole(sb, "sandbox", "pids_limit", 256, 16),
        disk_mib=r.whole(lim, "limits", "disk_mib", 0),
        log_rate_bytes_per_s=r.whole(sb, "sandbox", "log_rate_bytes_per_s", 65536),
        log_burst_bytes=r.whole(sb, "sandbox", "log_burst_bytes", 262144),
        start_window_s=r.whole(lim, "limits", "start_window_s", 30),
        dashboard_enabled=dash.get("enabled", True), dashboard_port=r.whole(dash, "dashboard", "port", 8742),
        owner=parse_owner(doc.get("owner"), r.fail), images=image_settings, ranges=r.checked)


def example_for(data: Path) -> str:
    """EXAMPLE with ``data`` (absolute) as its data directory and in the key's comment (issue 17 item 7: the
    directory in force, ``$SUANLI_HOME`` included, so that ``suanli status`` finds the daemon)."""
    text = json.dumps(str(data.expanduser().absolute()), ensure_ascii=False)  # a JSON string is a TOML basic string
    key = json.dumps(str(data.expanduser().absolute() / "node.key"), ensure_ascii=False)
    return EXAMPLE.replace('data_dir = "~/.local/share/suanli"', f"data_dir = {text}", 1).replace(
        '# key = "~/.local/share/suanli/node.key"', f"# key = {key}", 1)


def write_example(path: str | os.PathLike[str], data: Path | None = None) -> Path:
    """``suanli provide --init-config PATH``: the example, its data directory ``data`` or else the one in force."""
    target = Path(path)
    if target.exists():
        raise ConfigError(f"{target} already exists; refusing to overwrite it", path=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(example_for(data if data is not None else default_data_dir()))
    return target
