"""The buyer's use case: one job bought on the network (issue 14 item 3), for the CLI, the agent and Python.

``buy`` runs one ``BuyRequest`` (node.buyrequest) on a joined node: discover, rank, negotiate (falling
back to the next candidate on a refusal or silence), send the inputs (and the image, if the provider
lacks it), relay the job's output, verify and countersign every receipt, write the outputs, keep
agreement and receipts in the buyer's database, and return the exit code (node.exitcodes: the job's own,
or 126/127). ``run_once`` joins the overlay, buys, and leaves. ``suanli run`` (node.commands.run) and
the buyer agent (node.agent) both call ``buy``; a Python program calls ``run_once`` with a ``Collected``
console and reads the summary (agreement, provider, exit code, amount, database) from it:

    request = BuyRequest.build(["echo", "hi"], image="sha256:<64 hex>", cpus=0.5, memory="256m")
    console = Collected()
    code = trio.run(run_once, request, key, home, bootstrap, console)
    console.document["agreement_id"], console.document["amount_micros"], console.logs

Rule 1: a ``Console`` is where one run reports: notes (stderr), the job's own output, and one JSON-able
summary; ``quiet`` (--json) keeps only the summary.
Rule 2 (issue 17 item 5): a buyer's own limit or mistake is never recorded against the provider in the
buyer's local reputation (``reputation_outcome``).
Rule 3 (issue 18): with ``--on-preempt retry``, a job whose provider's owner took the machine back
(final reason ``owner_preempt``) runs again from the start on another provider, at most
``preempt_retries`` times (default 2); the preempted run stays billed to the second, its chain closed,
and that provider is not tried again for this job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.buyconsole import Collected, Console  # Rule 1 (Collected re-exported for Python callers)
from node.buyrequest import BuyRequest, choose_image
from node.exitcodes import EXIT_NO_PROVIDER, SUANLI, final_exit_code, job_exit_code
from node.outputs import check_output_dir

if TYPE_CHECKING:
    import trio

    from market.matching import JobRequest
    from p2p.envelope import Signed
    from p2p.identity import NodeKey
    from p2p.market_records import Offer
    from settlement.astore import AsyncStore

log = logging.getLogger("suanli.buyer")
__all__ = ["Collected", "Console", "buy", "reputation_outcome", "run_once", "write_outputs"]


async def run_once(request: BuyRequest, key: NodeKey, home: Path, bootstrap: Sequence[str], console: Console, *,
                   local: bool = False, dry_run: bool = False, interruptible: bool = False) -> int:
    """Join the overlay (``local``: on 127.0.0.1 only), ``buy`` the job, leave; the exit code."""
    import trio

    from node.overlay import BuyerOverlay
    from node.paths import client_listen
    from p2p.host import HostConfig, open_host

    t0 = time.monotonic()
    overlay = BuyerOverlay()
    config = HostConfig(key=key, listen=client_listen(local), bootstrap=tuple(bootstrap), dht_mode="client",
                        topics=overlay.topics)
    async with open_host(config) as node:
        async def find(job: JobRequest) -> list[Signed[Offer]]:
            return await overlay.discover(node, job, wait_s=request.retry.wait_s)

        return await buy(node, key, home, request, console, find, trio.Event(), None, dry_run=dry_run,
                         interruptible=interruptible, t0=t0)


async def buy(node: Any, key: NodeKey, home: Path, buy_request: BuyRequest, console: Console,
              find: Callable[[JobRequest], Awaitable[list[Signed[Offer]]]], cancel: trio.Event,
              store: AsyncStore | None, *, dry_run: bool = False, interruptible: bool = False,
              t0: float | None = None, started: Callable[[], None] | None = None,
              unanswered: Callable[[str], None] | None = None, exclude: frozenset[bytes] = frozenset(),
              earlier: tuple[dict[str, Any], ...] = ()) -> int:
    """One job on a joined node: discover, rank, negotiate, run, countersign, write outputs; the exit code.

    ``find(request)`` returns the offers to rank. ``cancel`` set during the job sends ``cancel`` to the
    provider and waits, within a bound, for its final receipt. ``interruptible``: SIGINT sets ``cancel``
    (and a second one leaves at once), as the standalone client wants. ``store``: the buyer database to
    use, or None to open ``<home>/buyer.db`` for this run. ``started()`` is called when the agreement is
    made and the job phase begins. ``unanswered(peer_id)`` is called for each candidate that could not be
    reached, stayed silent or broke off (the agent sets its offer aside, p2p.gossip Rule 4). ``dry_run``:
    print the candidates and the proposal, agree to nothing. ``exclude``: providers not to try, ``earlier``:
    the attempts preempted before this one (Rule 3).
    """
    import trio

    from market.matching import JobRequest, explain, facts, notes, rank_offers
    from market.service import negotiate_first, now_ms
    from node.buyer_config import load_max_exposure
    from node.buyer_job import pack_dir, run_job
    from node.joblog import keeper
    from node.jobsession_buyer import JobFailed
    from p2p.envelope import sign_record
    from p2p.identity import peer_id_from_public
    from p2p.market_records import JobSpec, Proposal
    from settlement.astore import open_store

    t0 = time.monotonic() if t0 is None else t0
    given_store = store  # rebound below to the one opened for this run
    image = choose_image(buy_request.image, buy_request.image_archive)
    if buy_request.outputs is not None:  # again: it may have been filled since the request was checked
        check_output_dir(buy_request.outputs, force=buy_request.force)
    inputs = pack_dir(buy_request.inputs) if buy_request.inputs is not None else b""
    env = dict(buy_request.env)
    resources = buy_request.resources
    # Issue 13, H3: no offer whose provider may claim more than this without our countersignature.
    max_exposure = load_max_exposure(home, buy_request.max_exposure_micros)
    say = console.say
    request = JobRequest(resources, buy_request.max_price_micros_per_s, buy_request.max_duration_s * 1000,
                         image.image_id, max_exposure_micros=max_exposure,
                         pull_bytes=await _pull_bytes(image.image_id, say))
    offers = [o for o in await find(request) if o.record.provider not in exclude]
    now = now_ms()
    reputation = await trio.to_thread.run_sync(_reputation, home / "buyer.db")
    ranked = rank_offers([o.record for o in offers], request, now, limit=buy_request.retry.candidates,
                         reputation=reputation)
    say(f"suanli: {len(offers)} offer(s) found in {time.monotonic() - t0:.1f} s; {len(ranked)} can run this job")
    if not ranked:
        for offer, reasons in explain([o.record for o in offers], request, now):
            say(f"  {peer_id_from_public(offer.provider)}: {'; '.join(reasons)}")
        if not offers:
            say(f"  {_no_offers_reason(resources)}")
        if console.quiet:
            console.result({"ok": False, "error": "no provider can run this job", "offers": len(offers),
                            "exit_code": EXIT_NO_PROVIDER, "exit_source": SUANLI})
        return EXIT_NO_PROVIDER
    signed_by_provider = {o.record.provider: o for o in offers}

    def proposal_for(offer_provider: bytes) -> Any:
        offer = signed_by_provider[offer_provider]
        return sign_record(Proposal(
            buyer=key.public, provider=offer_provider, offer_id=offer.record_id,
            job=JobSpec(image.image_id, image.archive_sha256, buy_request.command, env,
                        hashlib.sha256(inputs).digest()),
            resources=resources, max_price_micros_per_s=buy_request.max_price_micros_per_s,
            max_duration_ms=buy_request.max_duration_s * 1000,
            terms=offer.record.terms, nonce=os.urandom(16), created_at_ms=now_ms(),
            expires_at_ms=now_ms() + 30_000, accepts_preemption=buy_request.accepts_preemption), key)

    candidates = [(peer_id_from_public(c.offer.provider), proposal_for(c.offer.provider)) for c in ranked]
    if dry_run:
        plan = [{"provider": p, "price_micros_per_s": c.price_micros_per_s, "reputation": c.reputation,
                 "gpus": [g.model for g in c.gpus], **facts(c.offer, request), "notes": notes(c.offer, request, now)}
                for (p, _), c in zip(candidates, ranked, strict=True)]
        for entry in plan:
            say(f"  {entry['provider']}: {entry['price_micros_per_s']} micro-credits/s; {'; '.join(entry['notes'])}")
        first = candidates[0][1].record
        doc = {"dry_run": True, "candidates": plan, "would_propose": {
            "provider": candidates[0][0], "image": first.job.image, "command": list(first.job.command),
            "cpu_millis": first.resources.cpu_millis, "memory_mib": first.resources.memory_mib,
            "disk_mib": first.resources.disk_mib,
            "gpus": first.resources.gpus, "max_price_micros_per_s": first.max_price_micros_per_s,
            "max_duration_ms": first.max_duration_ms, "receipt_interval_ms": first.terms.interval_ms,
            "exposure_cap_micros": first.terms.exposure_cap_micros, "max_exposure_micros": max_exposure,
            "accepts_preemption": first.accepts_preemption}}
        doc.update({"exit_code": 0, "exit_source": SUANLI})
        console.result(doc, indent=None if console.quiet else 1)
        return 0
    db_path = home / "buyer.db"
    async with (contextlib.nullcontext(store) if store is not None else open_store(db_path)) as store:
        async def keep_evidence(agreement: Any, proposal: Any) -> None:
            # Stored before the countersignature leaves: the buyer can always show what it signed.
            offer = signed_by_provider.get(agreement.record.provider)
            if offer is not None:
                await store.put_offer(offer)
            await store.put_proposal(proposal)
            await store.put_agreement(agreement)

        deal, attempts = await negotiate_first(node, key, candidates,
                                               per_candidate_s=buy_request.retry.negotiate_timeout_s,
                                               before_accept=keep_evidence, addrs={  # dial each at its offer's
                                                   peer_id_from_public(p): o.record.addrs
                                                   for p, o in signed_by_provider.items()},
                                               bulk_bytes=len(inputs) + len(image.archive or b""))  # issue 15
        for attempt in attempts:
            if attempt.outcome != "agreed":
                say(f"suanli: {attempt.provider}: {attempt.outcome}")
            if not attempt.answered and unanswered is not None:
                unanswered(attempt.provider)
        if deal is None:
            if console.quiet:
                console.result({"ok": False, "error": "every candidate refused",
                                "attempts": [a.__dict__ for a in attempts],
                                "exit_code": EXIT_NO_PROVIDER, "exit_source": SUANLI})
            return EXIT_NO_PROVIDER
        ag = deal.agreement.record
        provider = peer_id_from_public(ag.provider)
        say(f"suanli: agreed with {provider} at {ag.price_micros_per_s} micro-credits/s "
            f"(agreement {deal.agreement.record_id.hex()[:16]})")
        if started is not None:
            started()
        hooks = _hooks(console, keeper(home, deal.agreement.record_id))  # suanli logs (node.joblog)
        failure: JobFailed | None = None
        outcome = None
        with trio.open_signal_receiver(signal.SIGINT) if interruptible else contextlib.nullcontext() as sigint:
            async with trio.open_nursery() as nursery:
                async def on_interrupt(signals: AsyncIterator[int]) -> None:
                    async for _ in signals:
                        if cancel.is_set():
                            say("suanli: interrupted again; leaving without the final receipt")
                            nursery.cancel_scope.cancel()
                            return
                        say("suanli: cancelling the job (Ctrl-C again to leave at once)")
                        cancel.set()

                if sigint is not None:
                    nursery.start_soon(on_interrupt, sigint)
                try:
                    outcome = await run_job(node, key, store, deal, inputs, image.archive, hooks, cancel, now_ms(),
                                            image_layers=image.layers)
                except JobFailed as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        # Local reputation (market.reputation): what this buyer saw of this provider, never its own mistake.
        seen = reputation_outcome(outcome.reason if outcome is not None else None,
                                  getattr(failure, "reason", None) if failure is not None else None)
        if seen is not None:
            await store.record_outcome(ag.provider, seen, deal.agreement.record_id, now_ms())
    if outcome is not None and outcome.clock_note:  # L1: a clock that is off is named, not guessed at
        say(f"suanli: note: {outcome.clock_note} (from its receipts' times); set your clock right (NTP)")
    if failure is not None or outcome is None:
        message = str(failure) if failure else "interrupted"
        lost, _ = job_exit_code(None)
        say(f"suanli: job failed: {message}; evidence in {db_path}")
        if console.quiet:
            console.result({"ok": False, "error": message, "agreement_id": deal.agreement.record_id.hex(),
                            "provider": provider, "database": str(db_path), "exit_code": lost,
                            "exit_source": SUANLI, "attempts": list(earlier)})
        return lost
    last = outcome.last
    attempt = {"agreement_id": deal.agreement.record_id.hex(), "provider": provider, "reason": outcome.reason,
               "billed_ms": last.metered_ms if last else 0, "amount_micros": last.amount_micros if last else 0,
               "receipts": len(outcome.receipts)}
    if outcome.reason == "owner_preempt" and buy_request.on_preempt == "retry" and buy_request.preempt_retries > 0:
        # Rule 3: billed to the second for what ran (its chain is closed and stored); the job runs again,
        # from the start, on another provider; its outputs are the retry's.
        left = buy_request.preempt_retries - 1
        say(f"suanli: preempted by {provider}'s owner after {outcome.last.metered_ms / 1000 if outcome.last else 0:.1f}"
            f" s (agreement {deal.agreement.record_id.hex()[:16]}); running the job again on another provider "
            f"({left} more {'retry' if left == 1 else 'retries'} allowed)")
        return await buy(node, key, home, dataclasses.replace(buy_request, preempt_retries=left), console, find, cancel,
                         given_store,
                         interruptible=interruptible, t0=t0, started=None, unanswered=unanswered,
                         exclude=exclude | {ag.provider}, earlier=(*earlier, attempt))
    files = write_outputs(outcome.outputs, buy_request.outputs, say,
                          force=buy_request.force) if buy_request.outputs is not None else []
    code, source = final_exit_code(outcome.reason, outcome.exit_code)
    summary: dict[str, Any] = {
        "ok": True, "agreement_id": deal.agreement.record_id.hex(), "provider": provider,
        "exit_code": code, "reason": outcome.reason, "billed_ms": last.metered_ms if last else 0,
        "amount_micros": last.amount_micros if last else 0, "receipts": len(outcome.receipts),
        "database": str(db_path), "outputs": files, "oom_killed": outcome.oom_killed,
        "exit_source": source, "attempts": [*earlier, attempt],  # Rule 3: each with its own receipts
    }
    if console.quiet:
        console.result(summary)
    else:
        if outcome.oom_killed:  # issue 17 item 4: the line a user reads says so, not only --json
            say(f"suanli: killed: out of memory (limit {_mib_text(resources.memory_mib)})")
        ended = (f"exit code {code}" if source != SUANLI
                 else f"preempted: the provider's owner took the machine back (exit {code}, node.exitcodes)"
                 if outcome.reason == "owner_preempt"
                 else f"the job reported no exit code (exit {code}, node.exitcodes)")
        for before in earlier:
            say(f"suanli: attempt {before['agreement_id'][:16]} on {before['provider']}: {before['reason']}, billed "
                f"{before['billed_ms'] / 1000:.3f} s, {before['amount_micros']} micro-credits")
        say(f"suanli: {ended} ({outcome.reason}); billed {summary['billed_ms'] / 1000:.3f} s, "
            f"{summary['amount_micros']} micro-credits over {summary['receipts']} co-signed receipts; "
            f"evidence in {db_path}")
    return code




def write_outputs(data: bytes, dest: Path, say: Callable[[str], None], *, force: bool = False) -> list[str]:
    """Write the outputs tar under ``dest`` (node.outputs: no symlink followed, nothing overwritten without
    --force); each entry skipped is a note, the first ten by name."""
    from node.outputs import write_outputs as write_safely

    written = write_safely(data, dest, force=force)
    for name, why in written.skipped[:10]:
        say(f"suanli: output {name!r} not written: {why}")
    if len(written.skipped) > 10:
        say(f"suanli: {len(written.skipped) - 10} more output entries not written")
    return written.files


def _mib_text(mib: int) -> str:
    return f"{mib >> 10} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


PULL_SIZE_TIMEOUT_S = 10.0
# The provider's statuses a buyer sees without --verbose.
_SHOWN_PHASES = frozenset({"paused", "resumed", "pulling_image", "loading_image", "logs_dropped", "outputs_skipped"})


async def _pull_bytes(image: str, say: Callable[[str], None]) -> int | None:
    """What a provider that lacks a registry image would pull (its manifest's sizes), shown beside each
    offer by the dry run and explain (ranking itself prefers a provider that holds it: market.matching);
    None for a local image, or when the registry does not answer in time: the provider checks the image
    itself before it bids (node.jobimages)."""
    import trio

    from p2p.errors import SuanliError
    from sandbox.registry import RegistryPolicy, parse_ref, resolve

    if "@" not in image:
        return None
    ref = parse_ref(image)
    policy = RegistryPolicy(allowed=(ref.registry,), timeout_s=PULL_SIZE_TIMEOUT_S)  # the buyer's own choice
    try:
        with trio.fail_after(PULL_SIZE_TIMEOUT_S * 2):
            resolved = await trio.to_thread.run_sync(resolve, ref, policy, abandon_on_cancel=True)
    except (SuanliError, trio.TooSlowError) as exc:
        say(f"suanli: the size of {ref.name} is unknown ({exc or 'no answer'}); offers are ranked without it")
        return None
    return resolved.total_bytes


def _no_offers_reason(resources: Any) -> str:
    """Why no offer at all came back: a GPU request looks only for GPU offers, so say what was missing."""
    if resources.gpus:
        model = f" {resources.gpu_model}" if resources.gpu_model else ""
        return (f"no provider on this network offers a{model} GPU (--gpus {resources.gpus}): none answered "
                "within --wait; drop --gpus to run on CPU")
    return "no offers at all: is any provider running on this network?"


# Rule 2 (issue 17 item 5): a buyer's mistake is never recorded against a provider. A job that ran as
# agreed (to its end, to the buyer's cancel, or to the buyer's own --max-duration) is a success for the
# provider; an end the buyer caused (it stopped countersigning; it named an image the provider lacks and
# shipped no archive; it left before the end) is not the provider's either way and is not recorded.
PROVIDER_KEPT_ITS_WORD = frozenset({"completed", "buyer_cancel", "deadline"})
NOT_THE_PROVIDERS = frozenset({"buyer_unresponsive", "image_missing",
                               "owner_preempt"})  # announced in the terms: the owner comes first (issue 18)


def reputation_outcome(final_reason: str | None, failure_reason: str | None) -> str | None:
    """What this run says of the provider (market.reputation COMPLETED or FAILED), or None: nothing."""
    from market.reputation import COMPLETED, FAILED

    if final_reason is not None and failure_reason is None:
        if final_reason in PROVIDER_KEPT_ITS_WORD:
            return COMPLETED
        return None if final_reason in NOT_THE_PROVIDERS else FAILED
    if failure_reason is None:  # no outcome and no failure: the buyer left (interrupted) before the end
        return None
    return None if failure_reason in NOT_THE_PROVIDERS else FAILED


def _reputation(db_path: Path) -> dict[bytes, int]:
    from market.reputation import scores
    from settlement.store import Store

    if not db_path.exists():
        return {}
    with Store(db_path) as store:
        return scores(store.outcome_counts())


def _hooks(console: Console, keep: Callable[[str, bytes], None]) -> Any:
    from node.buyer_job import BuyerHooks

    say = console.say

    def on_log(stream: str, data: bytes) -> None:
        keep(stream, data)  # stored as it arrives, then shown
        console.log(stream, data)

    def on_status(phase: str, detail: str) -> None:
        if phase in _SHOWN_PHASES or console.verbose:
            say(f"suanli: provider says {phase}" + (f": {detail}" if detail else ""))

    def on_progress(kind: str, done: int, total: int) -> None:
        if not console.quiet and (done == total or done % (4 << 20) < (128 << 10)):
            say(f"suanli: sending {kind}: {done * 100 // max(total, 1)}% ({done >> 20}/{total >> 20} MiB)")

    return BuyerHooks(on_log=on_log, on_status=on_status, on_receipt=console.receipt, on_progress=on_progress)
