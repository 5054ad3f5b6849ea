"""The buyer's own limits: ``suanli run --max-exposure`` and ``<data dir>/buyer.toml``.

    # buyer.toml
    max_exposure_micros = 100000   # the most a provider may claim that I have not countersigned

Rule 1 (issue 13, H3): an offer states the exposure cap its provider wants (the most it may claim
beyond what the buyer countersigned, settlement.billing Rule 3); the buyer accepts no cap above its
own maximum: such offers are not ranked, ``explain`` says why, and no agreement above it is made.
Rule 2: the flag wins over the file, the file over ``DEFAULT_MAX_EXPOSURE_MICROS``; a value outside
``MAX_EXPOSURE_RANGE``, an unknown key or a file that is not TOML is one line (ConfigError).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from p2p.errors import ConfigError

BUYER_CONFIG = "buyer.toml"
DEFAULT_MAX_EXPOSURE_MICROS = 100_000  # 0.1 credit: a few minutes of a CPU core at typical prices
MAX_EXPOSURE_RANGE = (0, 1_000_000_000_000)
MAX_CONFIG_BYTES = 64 * 1024


def _checked(value: object, where: str) -> int:
    lo, hi = MAX_EXPOSURE_RANGE
    if type(value) is not int or not lo <= value <= hi:
        raise ConfigError(f"{where}: expected a whole number of micro-credits in {lo}..{hi}, got {value!r:.40}",
                          key="max_exposure_micros")
    return value


def load_max_exposure(home: Path, flag: int | None) -> int:
    """The buyer's maximum exposure in micro-credits (Rule 2)."""
    if flag is not None:
        return _checked(flag, "--max-exposure")
    path = home / BUYER_CONFIG
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return DEFAULT_MAX_EXPOSURE_MICROS
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", path=str(path)) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes", path=str(path))
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from exc
    unknown = sorted(set(doc) - {"max_exposure_micros"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r:.40} (known: max_exposure_micros)", path=str(path))
    if "max_exposure_micros" not in doc:
        return DEFAULT_MAX_EXPOSURE_MICROS
    return _checked(doc["max_exposure_micros"], f"{path}: max_exposure_micros")
