"""What a job costs on an offer (pure): one integer price per second for the whole allocation.

``price = gpus * gpu_price[model] + ceil(cpu_millis * cpu_core_price / 1000)
         + ceil(memory_mib * memory_gib_price / 1024)``   (micro-credits per second)

Rounding up per resource keeps a fractional allocation from being free. The agreement fixes this one
number; receipts bill ``metered_ms * price // 1000`` (settlement.billing).
"""

from __future__ import annotations

from p2p.market_records import GpuSpec, Prices, ResourceRequest


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gpu_unit_price(prices: Prices, gpu: GpuSpec) -> int | None:
    """The per-second price of one GPU of this model, or None when the provider set no price for it."""
    return prices.gpu_micros_per_s.get(gpu.model)


def price_per_s(prices: Prices, request: ResourceRequest, gpus: tuple[GpuSpec, ...] = ()) -> int | None:
    """Micro-credits per second for ``request`` on ``gpus`` (the devices that would be allocated)."""
    total = _ceil_div(request.cpu_millis * prices.cpu_core_micros_per_s, 1000)
    total += _ceil_div(request.memory_mib * prices.memory_gib_micros_per_s, 1024)
    for gpu in gpus:
        unit = gpu_unit_price(prices, gpu)
        if unit is None:
            return None
        total += unit
    return total
