"""The owner watch's side of one provider job (a trio shell): one part of ``node.provider_job.JobRun``, as
node.jobcontainer is. node.owner_watch hands each running job ``pause``, ``resume`` or ``stop``
(node.owner_state Rule 3); this performs them in the order given, through the session's pause reasons.

Rule 1: the owner's pause is one reason in the session's set (``OWNER_RETURNED``, node.jobsession Rule 2):
a countersignature arriving meanwhile never thaws a job the owner wants frozen, and the other way round.
Rule 2: a preempted job is killed where it is frozen, never thawed for a graceful stop (the owner is using
the machine, and a thawed job would be billed again): the reason ``owner_preempt`` is set first, then the
runner's kill marks the exit as ours before the job's stop watch can thaw it.
Rule 3: paused time is never billed: the runner stops the metered clock at the freeze (sandbox.metering
Rule 1), so the final receipt covers every second the job ran and nothing after the pause.
Rule 4: a job being stopped (a cancel, a shutdown) is neither paused (session Rule 3) nor thawed here: the
runner's stop thaws it. Residual race, in sandbox.runner: a stop asked for while our unpause is in flight
finds the job "paused", and its own unpause fails.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from node.jobsession import OWNER_RETURNED, PAUSE_DETAIL, Pause, Resume
from p2p.errors import SuanliError
from p2p.receipt_records import OWNER_PREEMPT

if TYPE_CHECKING:
    from node.provider_job import JobRun

log = logging.getLogger("suanli.node.job")

OWNER_PAUSE, OWNER_RESUME, OWNER_STOP = "pause", "resume", "stop"  # node.owner_state's actions


class OwnerSide:
    """The owner watch's events for one job, performed in order (see the module docstring)."""

    def owner_event(self: JobRun, kind: str) -> None:  # type: ignore[misc]
        """``pause``, ``resume`` or ``stop`` (owner_preempt); called from the daemon's watch task."""
        try:
            self._owner_send.send_nowait(kind)
        except trio.WouldBlock:  # 64 events behind: a stop still gets through the session's first reason
            if kind == OWNER_STOP:
                self.active.request_stop(OWNER_PREEMPT)

    async def _serve_owner_events(self: JobRun) -> None:  # type: ignore[misc]
        async for kind in self._owner_events:
            job = self._job
            if kind == OWNER_STOP:
                # Killed where it is frozen, never thawed (the owner is using the machine): the reason is
                # set first, and kill() marks the exit as ours before watch_stop can thaw it for a stop.
                self.active.request_stop(OWNER_PREEMPT)
                if job is not None and not job.exited.is_set():
                    log.info("job %s: the owner is still using the machine after the notice; stopping it", self.ag_hex)
                    try:
                        await job.kill()
                    except SuanliError as exc:
                        log.info("job %s: %s", self.ag_hex, exc)
                continue
            if job is None or job.exited.is_set() or self.session.machine.phase != "running":
                continue
            if self.session.stopping or self.active.stop_requested.is_set():
                # Rule 4: the stop thaws and ends the job itself; an unpause of ours racing it would make the
                # runner's own unpause fail and the stop with it. Only the reason is forgotten.
                if kind == OWNER_RESUME:
                    self.session.pause_lifted(OWNER_RETURNED)
                continue
            actions = (self.session.pause_requested(OWNER_RETURNED) if kind == OWNER_PAUSE
                       else self.session.pause_lifted(OWNER_RETURNED))
            for action in actions:
                try:
                    if isinstance(action, Pause):
                        log.info("job %s: pausing (%s)", self.ag_hex, action.reason)
                        await job.pause()
                        self.status("paused", PAUSE_DETAIL[OWNER_RETURNED])
                    elif isinstance(action, Resume):
                        await job.resume()
                        self.status("resumed")
                except SuanliError as exc:
                    log.info("job %s: %s", self.ag_hex, exc)  # the container exited meanwhile
