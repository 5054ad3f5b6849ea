"""An outbox for one stream: control messages in order, log lines best-effort, never blocking the sender.

A job's receipt loop must not stall because the buyer stopped reading (a ``kill -STOP``-ed buyer fills
the Yamux window and every write blocks, docs/LIBP2P.md item 22). So producers only enqueue; one task writes.
Rule 1: control messages (receipts, statuses, the end of a job) are kept and sent in order.
Rule 2: log lines are dropped, oldest first, when more than ``max_logs`` wait (a note says how many).
Rule 3: once a write fails, the peer is gone: ``broken`` is set and everything later is discarded.
"""

from __future__ import annotations

import collections
import logging

import trio

from p2p.errors import RemoteProtocolError
from p2p.framing import FramedStream
from p2p.records import Record

log = logging.getLogger("suanli.node.outbox")


class Outbox:
    def __init__(self, framed: FramedStream, *, max_logs: int = 512) -> None:
        self.framed = framed
        self.max_logs = max_logs
        self._control: collections.deque[bytes] = collections.deque()
        self._logs: collections.deque[bytes] = collections.deque()
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.dropped_logs = 0
        self.broken = trio.Event()

    def control(self, msg: Record) -> None:
        if not self.broken.is_set():
            self._control.append(msg.encode())
            self._kick()

    def log_line(self, msg: Record) -> None:
        if self.broken.is_set():
            return
        if len(self._logs) >= self.max_logs:
            self._logs.popleft()
            self.dropped_logs += 1
        self._logs.append(msg.encode())
        self._kick()

    def _kick(self) -> None:
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def drained(self) -> None:
        """Wait until everything queued so far was written (or the peer is gone)."""
        while (self._control or self._logs) and not self.broken.is_set():
            await self._idle.wait()

    async def run(self) -> None:
        """The one writer; runs until cancelled."""
        while True:
            if not self._control and not self._logs:
                self._idle.set()
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            payload = self._control.popleft() if self._control else self._logs.popleft()
            try:
                await self.framed.send_frame(payload)
            except RemoteProtocolError as exc:
                log.info("stream to %s broke: %s", self.framed.peer, exc)
                self.broken.set()
                self._control.clear()
                self._logs.clear()
                self._idle.set()
                return
