"""The provider's configuration: one TOML file, checked completely before anything starts.

Rule 1: a configuration error is one line that names the key and the problem
(``config.toml: prices.cpu_core_micros_per_s: expected a whole number >= 0, got -3``).
Rule 2: unknown keys are errors (a typo must not silently fall back to a default).
``EXAMPLE`` is what ``suanli provide --init-config PATH`` writes; the tests load it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from market.offers import ProviderTerms
from market.records import Limits, Prices, ReceiptTerms
from node.paths import data_dir as default_data_dir
from p2p.errors import ConfigError

EXAMPLE = '''\
# Suanli provider configuration (suanli provide --config THIS_FILE).
# Money is in micro-credits (1 credit = 1,000,000), time in milliseconds unless a name says _s.

# Where the node keeps its key, database and control socket.
data_dir = "~/.local/share/suanli"
# The node's Ed25519 key; created on first start when missing. Default: <data_dir>/node.key
# key = "~/.local/share/suanli/node.key"

# libp2p listen addresses. Port 0 lets the OS choose.
listen = ["/ip4/0.0.0.0/tcp/0"]
# Bootstrap peers: full multiaddrs ending in /p2p/<peer id>.
bootstrap = []

[prices]
# Per second, for each unit allocated to a job.
cpu_core_micros_per_s = 50
memory_gib_micros_per_s = 10

[prices.gpu_micros_per_s]
# One line per GPU model you sell, exactly as NVML names it. A GPU without a price is not offered.
# "NVIDIA GeForce RTX 4090" = 600

[limits]
max_duration_s = 3600          # longest job accepted
max_concurrent_jobs = 2
cpu_millis = 0                 # CPU offered, in millicores; 0 = all cores
memory_mib = 0                 # memory offered; 0 = three quarters of this machine's memory
# Images allowed, pinned by id ("sha256:..."); empty = any image the buyer supplies.
allowed_images = []
offer_ttl_s = 120              # how long each signed offer lives; it is re-issued at half-life

[receipts]
interval_ms = 1000             # one co-signed receipt per interval
countersign_timeout_ms = 3000  # pause the job when the buyer's countersignature is this late
grace_ms = 5000                # then stop it after this much longer
exposure_cap_micros = 50000    # the most the job may run ahead of the buyer's signatures

[sandbox]
# "runsc" runs jobs under gVisor when the engine has it registered; empty = Docker's default (runc).
runtime = ""
pids_limit = 256
'''

_TOP = {"data_dir", "key", "listen", "bootstrap", "prices", "limits", "receipts", "sandbox"}
_SECTIONS: dict[str, set[str]] = {
    "prices": {"cpu_core_micros_per_s", "memory_gib_micros_per_s", "gpu_micros_per_s"},
    "limits": {"max_duration_s", "max_concurrent_jobs", "cpu_millis", "memory_mib", "allowed_images", "offer_ttl_s"},
    "receipts": {"interval_ms", "countersign_timeout_ms", "grace_ms", "exposure_cap_micros"},
    "sandbox": {"runtime", "pids_limit"},
}


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


class _Reader:
    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path, self.doc = path, doc

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

    def whole(self, table: dict[str, Any], section: str, key: str, default: int, minimum: int = 0) -> int:
        value = table.get(key, default)
        if type(value) is not int or value < minimum:
            raise self.fail(f"{section}.{key}", f"expected a whole number >= {minimum}, got {value!r}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        return tuple(value)


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
        if not addr.startswith(("/ip4/", "/ip6/", "/dns")):
            raise r.fail("listen", f"{addr!r} is not a multiaddr like /ip4/0.0.0.0/tcp/4001")
    bootstrap = r.strings(doc.get("bootstrap", []), "bootstrap")
    for addr in bootstrap:
        if "/p2p/" not in addr:
            raise r.fail("bootstrap", f"{addr!r} must end in /p2p/<peer id>")

    p = r.section("prices")
    gpu_prices = p.get("gpu_micros_per_s", {})
    if not isinstance(gpu_prices, dict):
        raise r.fail("prices.gpu_micros_per_s", "expected a table of model = price")
    for model, price in gpu_prices.items():
        if type(price) is not int or price < 0:
            raise r.fail(f"prices.gpu_micros_per_s.{model}", f"expected a whole number >= 0, got {price!r}")
    prices = Prices(gpu_micros_per_s=dict(gpu_prices),
                    cpu_core_micros_per_s=r.whole(p, "prices", "cpu_core_micros_per_s", 50),
                    memory_gib_micros_per_s=r.whole(p, "prices", "memory_gib_micros_per_s", 10))
    lim = r.section("limits")
    images = r.strings(lim.get("allowed_images", []), "limits.allowed_images")
    for image in images:
        if not (image.startswith("sha256:") and len(image) == 71):
            raise r.fail("limits.allowed_images", f"{image!r} is not a pinned image id (sha256:<64 hex>)")
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
    return ProviderConfig(
        path=cfg_path, data_dir=data_dir, key_path=_expand(key) if key else data_dir / "node.key",
        listen=listen, bootstrap=bootstrap,
        terms=ProviderTerms(prices, limits, receipts, ttl_ms=r.whole(lim, "limits", "offer_ttl_s", 120, 10) * 1000),
        cpu_millis=r.whole(lim, "limits", "cpu_millis", 0), memory_mib=r.whole(lim, "limits", "memory_mib", 0),
        runtime=runtime or None, pids_limit=r.whole(sb, "sandbox", "pids_limit", 256, 16))


def write_example(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.exists():
        raise ConfigError(f"{target} already exists; refusing to overwrite it", path=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(EXAMPLE)
    return target
