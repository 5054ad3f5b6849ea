"""The store for trio code: every call runs in one worker thread, one at a time.

Rule 1: an ``await store.append_receipt(...)`` returns only after the write is durable (settlement.store
Rule 1); callers acknowledge to a peer only after it returns.
Rule 2: calls are serialised through a CapacityLimiter of 1, so the one sqlite connection is never used
from two threads at once. A cancelled caller still lets its write finish (the thread is not abandoned).
Rule 3 (group commit): a receipt waits ``group_window_s`` (default 20 ms) for others, and receipts
appended meanwhile, or while an earlier write is under way, go to disk in one transaction with one trip
to the worker thread. A provider running fifty jobs issues their receipts on the same metering tick
(sandbox.meter), and their countersignatures come back within milliseconds, so a tick costs a couple
of fsyncs, not a hundred. The wait delays only when a receipt is sent or a countersignature counted,
both at one-second granularity. Each caller still gets its own outcome: a receipt the store refuses
fails only its own call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from p2p.envelope import Signed
from settlement.errors import StoreError
from settlement.store import Store

T = TypeVar("T")


class _Batch:
    """Receipts waiting to be committed together, and when they were."""

    def __init__(self) -> None:
        self.items: list[Signed[Any]] = []
        self.results: list[StoreError | None] = []
        self.failure: BaseException | None = None
        self.done = trio.Event()


GROUP_WINDOW_S = 0.02


class AsyncStore:
    def __init__(self, store: Store, *, group_window_s: float = GROUP_WINDOW_S) -> None:
        self.sync = store
        self.group_window_s = group_window_s
        self._limiter = trio.CapacityLimiter(1)
        self._open: _Batch | None = None  # the batch new receipts join, until its commit begins
        self.commits = 0  # group commits so far (for tests and benchmarks)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def append_receipt(self, signed: Signed[Any]) -> None:
        """Durable on return (Rule 1), committed with whatever else is waiting (Rule 3).

        Not cancellable, like every other call here: a write that was handed over finishes, and its
        caller learns how it went.
        """
        with trio.CancelScope(shield=True):
            batch = self._open
            leader = batch is None
            if batch is None:
                batch = self._open = _Batch()
            index = len(batch.items)
            batch.items.append(signed)
            if leader:
                await self._commit(batch)
            else:
                await batch.done.wait()
        if batch.failure is not None:
            if leader:
                raise batch.failure
            raise StoreError(f"the group commit failed: {batch.failure}") from batch.failure
        error = batch.results[index]
        if error is not None:
            raise error

    async def _commit(self, batch: _Batch) -> None:
        try:
            await trio.sleep(self.group_window_s)  # Rule 3: let the rest of this tick join
            async with self._limiter:  # earlier work first; everything that joined meanwhile rides along
                if self._open is batch:
                    self._open = None
                self.commits += 1
                batch.results = await trio.to_thread.run_sync(self.sync.append_receipts, batch.items)
        except BaseException as exc:  # every caller of the batch hears it, not only the leader
            batch.failure = exc
        finally:
            if self._open is batch:
                self._open = None
            batch.done.set()

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
