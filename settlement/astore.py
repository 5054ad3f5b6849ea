"""The store for trio code: every call runs in one worker thread, one at a time.

Rule 1: an ``await store.append_receipt(...)`` returns only after the write is durable (settlement.store
Rule 1); callers acknowledge to a peer only after it returns.
Rule 2: calls are serialised through a CapacityLimiter of 1, so the one sqlite connection is never used
from two threads at once. A cancelled caller still lets its write finish (the thread is not abandoned).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from settlement.store import Store

T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.sync = store
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)
        if not callable(method):
            raise AttributeError(name)

        async def call(*args: Any) -> Any:
            return await self.run(method, *args)

        return call


@asynccontextmanager
async def open_store(path: str | Path) -> AsyncIterator[AsyncStore]:
    store = await trio.to_thread.run_sync(Store, path)
    try:
        yield AsyncStore(store)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)
