"""``suanli run [options] -- COMMAND...``: the buyer's light client, deliberately like ``docker run``.

Discover offers, rank them, negotiate (falling back to the next candidate on a refusal or silence), send
the inputs (and the image, if the provider lacks it), print the job's output live, verify and
countersign every receipt, write the outputs, keep agreement and receipts in the buyer's database, and
exit with the job's exit code. Exit codes of its own: node.exitcodes (125 usage or suanli's own error,
126 no provider could take the job, 127 the job did not end by itself), named by ``exit_source`` in --json.

Rule 1 (issue 17 item 5): every option is checked before anything is created or sent (no key, no
database, no dial): a mistake is one line and exit 125, and never reaches a provider.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import check_run_numbers
from node.exitcodes import EXIT_NO_PROVIDER, EXIT_SUANLI, SUANLI, job_exit_code
from node.outputs import check_output_dir
from p2p.errors import SuanliError
from sandbox.plan import MAX_DISK_MIB, MIN_DISK_MIB

log = logging.getLogger("suanli.run")
_SIZE = re.compile(r"^(\d+)(?:\.(\d+))?([kKmMgG]?)(i?[bB])?$")
_UNIT_SHIFT = {"": -20, "k": -10, "m": 0, "g": 10}


def parse_memory_mib(text: str) -> int:
    """``--memory``: bytes, or k/m/g (binary units, as Docker's), fractions allowed (``1.5g``); whole MiB,
    rounded down. Exact arithmetic: a float would overflow or round a huge value."""
    m = _SIZE.match(text.strip())
    if not m or len(text) > 64:
        raise SuanliError(f"--memory {text!r}: give a size such as 512m, 1.5g or 2g")
    whole, frac, unit = m.group(1), m.group(2) or "", m.group(3).lower()
    scaled = int(whole + frac)  # the value times 10**len(frac)
    shift = _UNIT_SHIFT[unit]
    mib = (scaled << shift if shift >= 0 else scaled >> -shift) // 10 ** len(frac)
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


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SuanliError(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


@dataclass(frozen=True)
class ImageChoice:
    image_id: str
    archive: bytes | None
    archive_sha256: bytes | None


def choose_image(image: str | None, archive_path: str | None) -> ImageChoice:
    from sandbox.archive import read_digests

    if archive_path:
        try:
            data = Path(archive_path).read_bytes()
        except OSError as exc:
            raise SuanliError(f"--image-archive {archive_path}: {exc.strerror}") from exc
        digests = read_digests(data)
        ids = digests.image_ids()
        if image and image not in ids:
            raise SuanliError(f"--image {image} is not the image in {archive_path} ({', '.join(sorted(ids))})")
        chosen = image or digests.config_digest
        return ImageChoice(chosen, data, bytes.fromhex(digests.archive_sha256.split(":", 1)[1]))
    if not image:
        raise SuanliError("give --image sha256:<id> (an image the provider has) and/or --image-archive FILE")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", image):
        raise SuanliError(f"--image {image!r}: pin the image by its id (sha256:<64 hex>, see `docker images "
                          "--no-trunc`); a tag could mean another image on the provider's machine")
    return ImageChoice(image, None, None)


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


class Console:
    """Where one run reports: notes on stderr, the job's own output, and the one JSON document on stdout.

    The standalone client writes to its own terminal; the resident agent (node.agent) sends the same
    calls to the ``suanli run`` that asked for the job.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet  # --json: no notes, no job output, only the final document

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def log(self, stream: str, data: bytes) -> None:
        if self.quiet:
            return
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data + b"\n")
        out.flush()

    def result(self, doc: dict[str, Any], indent: int | None = None) -> None:
        print(json.dumps(doc, indent=indent), flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    """Rule 1, then the job (through the agent when one runs); a SuanliError is one line and exit 125
    (with --json, also a document on stdout saying so)."""
    try:
        return _cmd_run(args)
    except SuanliError as exc:
        print(f"suanli: error: {exc}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "exit_code": EXIT_SUANLI, "exit_source": SUANLI}),
                  flush=True)
        return EXIT_SUANLI


def _cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SuanliError("give the command to run after --, e.g. suanli run --image sha256:... -- echo hi")
    socket_path = agent_socket(args)
    if socket_path is not None:
        from node.agent_client import AgentUnavailable, run_via_agent

        try:
            return run_via_agent(socket_path, args, command)
        except AgentUnavailable as exc:
            if args.agent:
                raise SuanliError(str(exc)) from None
            # a stale socket of an agent that is gone: run without it
    from node.paths import bootstrap_peers, data_dir

    home = data_dir(args.data_dir)
    check_job_args(args, home)  # Rule 1: before the key, the database or the network
    bootstrap = bootstrap_peers(args.bootstrap)
    from p2p.host import parse_multiaddr  # imports libp2p, which the run needs anyway

    for addr in bootstrap:
        parse_multiaddr(addr, what="--bootstrap", need_peer=True)
    key = buyer_key(args, home)
    import trio

    from node.logsetup import configure

    configure(args.verbose)
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    return trio.run(_run, args, command, home, key, bootstrap)


def buyer_key(args: argparse.Namespace, home: Path) -> Any:
    """``--key PATH`` must exist (a typo must not become a new identity); only the default key, in the
    data directory, is created when missing."""
    from p2p.identity import load_key, load_or_create_key

    if args.key:
        return load_key(args.key)
    key, _ = load_or_create_key(home / "node.key")
    return key


def agent_socket(args: argparse.Namespace) -> Path | None:
    """The resident agent ``suanli run`` should hand the job to, or None to run it in this process.

    ``--agent PATH`` names one; otherwise the data directory's ``agent.sock`` is used when it exists,
    unless ``--no-agent`` or ``--key`` (a key of the caller's choice, not the agent's) is given.
    """
    if args.agent:
        return Path(args.agent)
    if args.no_agent or args.key:
        return None
    from node.paths import AGENT_SOCKET, data_dir

    path = data_dir(args.data_dir) / AGENT_SOCKET
    return path if path.exists() else None


async def _run(args: argparse.Namespace, command: list[str], home: Path, key: Any,
               bootstrap: tuple[str, ...]) -> int:
    import trio

    from node.overlay import BuyerOverlay
    from node.paths import client_listen
    from p2p.host import HostConfig, open_host

    t0 = time.monotonic()
    overlay = BuyerOverlay()
    config = HostConfig(key=key, listen=client_listen(args.local), bootstrap=bootstrap, dht_mode="client",
                        topics=overlay.topics)
    async with open_host(config) as node:
        async def find(request: Any) -> Any:
            return await overlay.discover(node, request, wait_s=args.wait)

        return await execute(node, key, home, args, command, Console(args.json), find, trio.Event(), None,
                             interruptible=True, t0=t0)


def check_job_args(args: argparse.Namespace, home: Path | None = None) -> None:
    """The checks of the job's options that need no network (Rule 1): a mistake is reported before a key,
    a database or a connection is made. Reads nothing large and creates nothing."""
    parse_memory_mib(args.memory)
    parse_disk_mib(getattr(args, "disk", "1g"))
    parse_env(args.env or [])
    check_run_numbers(vars(args))
    if home is not None and home.exists() and not home.is_dir():
        raise SuanliError(f"--data-dir {home}: exists and is not a directory")
    if home is not None:
        from node.buyer_config import load_max_exposure

        load_max_exposure(home, getattr(args, "max_exposure", None))  # the flag, else buyer.toml
    if args.output:
        check_output_dir(Path(args.output), force=getattr(args, "force", False))
    if args.input and not Path(args.input).is_dir():
        raise SuanliError(f"--input {args.input}: not a directory")
    if args.image_archive and not Path(args.image_archive).is_file():
        raise SuanliError(f"--image-archive {args.image_archive}: no such file")
    if not args.image_archive:
        choose_image(args.image, None)  # a missing or unpinned --image; an archive is read when the job runs


async def execute(node: Any, key: Any, home: Path, args: argparse.Namespace, command: list[str], console: Console,
                  find: Callable[[Any], Awaitable[list[Any]]], cancel: Any, store: Any, *,
                  interruptible: bool = False, t0: float | None = None, started: Callable[[], None] | None = None,
                  unanswered: Callable[[str], None] | None = None) -> int:
    """One job on a joined node: discover, rank, negotiate, run, countersign, write outputs; the exit code.

    ``find(request)`` returns the offers to rank. ``cancel`` (a trio.Event) set during the job sends
    ``cancel`` to the provider and waits, within a bound, for its final receipt. ``interruptible``:
    SIGINT sets ``cancel`` (and a second one leaves at once), as the standalone client wants.
    ``store``: the buyer database to use, or None to open ``<home>/buyer.db`` for this run.
    ``started()`` is called when the agreement is made and the job phase begins. ``unanswered(peer_id)``
    is called for each candidate that could not be reached, stayed silent or broke off (the agent sets
    its offer aside, p2p.gossip Rule 4).
    """
    import trio

    from market.matching import JobRequest, explain, rank_offers
    from market.records import JobSpec, Proposal, ResourceRequest
    from market.service import negotiate_first, now_ms
    from node.buyer_config import load_max_exposure
    from node.buyer_job import JobFailed, pack_dir, run_job
    from p2p.envelope import sign_record
    from p2p.identity import peer_id_from_public
    from settlement.astore import open_store

    t0 = time.monotonic() if t0 is None else t0
    image = choose_image(args.image, args.image_archive)
    check_run_numbers(vars(args))
    if args.output:
        check_output_dir(Path(args.output), force=getattr(args, "force", False))
    inputs = pack_dir(Path(args.input)) if args.input else b""
    env = parse_env(args.env or [])
    resources = ResourceRequest(gpus=args.gpus, gpu_model=args.gpu_model, min_gpu_memory_mib=args.gpu_memory or 0,
                                min_compute_capability=None, cpu_millis=int(args.cpus * 1000),
                                memory_mib=parse_memory_mib(args.memory),
                                disk_mib=parse_disk_mib(getattr(args, "disk", "1g")))
    # Issue 13, H3: no offer whose provider may claim more than this without our countersignature.
    max_exposure = load_max_exposure(home, getattr(args, "max_exposure", None))
    request = JobRequest(resources, args.max_price, args.max_duration * 1000, image.image_id,
                         max_exposure_micros=max_exposure)
    say = console.say
    offers = await find(request)
    now = now_ms()
    reputation = await trio.to_thread.run_sync(_reputation, home / "buyer.db")
    ranked = rank_offers([o.record for o in offers], request, now, limit=args.candidates, reputation=reputation)
    say(f"suanli: {len(offers)} offer(s) found in {time.monotonic() - t0:.1f} s; {len(ranked)} can run this job")
    if not ranked:
        for offer, reasons in explain([o.record for o in offers], request, now):
            say(f"  {peer_id_from_public(offer.provider)}: {'; '.join(reasons)}")
        if not offers:
            say(f"  {_no_offers_reason(resources)}")
        if args.json:
            console.result({"ok": False, "error": "no provider can run this job", "offers": len(offers),
                            "exit_code": EXIT_NO_PROVIDER, "exit_source": SUANLI})
        return EXIT_NO_PROVIDER
    signed_by_provider = {o.record.provider: o for o in offers}

    def proposal_for(offer_provider: bytes) -> Any:
        offer = signed_by_provider[offer_provider]
        return sign_record(Proposal(
            buyer=key.public, provider=offer_provider, offer_id=offer.record_id,
            job=JobSpec(image.image_id, image.archive_sha256, tuple(command), env,
                        hashlib.sha256(inputs).digest()),
            resources=resources, max_price_micros_per_s=args.max_price, max_duration_ms=args.max_duration * 1000,
            terms=offer.record.terms, nonce=os.urandom(16), created_at_ms=now_ms(),
            expires_at_ms=now_ms() + 30_000), key)

    candidates = [(peer_id_from_public(c.offer.provider), proposal_for(c.offer.provider)) for c in ranked]
    if args.dry_run:
        plan = [{"provider": p, "price_micros_per_s": c.price_micros_per_s, "reputation": c.reputation,
                 "gpus": [g.model for g in c.gpus]} for (p, _), c in zip(candidates, ranked, strict=True)]
        first = candidates[0][1].record
        doc = {"dry_run": True, "candidates": plan, "would_propose": {
            "provider": candidates[0][0], "image": first.job.image, "command": list(first.job.command),
            "cpu_millis": first.resources.cpu_millis, "memory_mib": first.resources.memory_mib,
            "disk_mib": first.resources.disk_mib,
            "gpus": first.resources.gpus, "max_price_micros_per_s": first.max_price_micros_per_s,
            "max_duration_ms": first.max_duration_ms, "receipt_interval_ms": first.terms.interval_ms,
            "exposure_cap_micros": first.terms.exposure_cap_micros, "max_exposure_micros": max_exposure}}
        doc.update({"exit_code": 0, "exit_source": SUANLI})
        console.result(doc, indent=None if args.json else 1)
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

        deal, attempts = await negotiate_first(node, key, candidates, per_candidate_s=args.negotiate_timeout,
                                               before_accept=keep_evidence, addrs={  # dial each at its offer's
                                                   peer_id_from_public(p): o.record.addrs
                                                   for p, o in signed_by_provider.items()})
        for attempt in attempts:
            if attempt.outcome != "agreed":
                say(f"suanli: {attempt.provider}: {attempt.outcome}")
            if not attempt.answered and unanswered is not None:
                unanswered(attempt.provider)
        if deal is None:
            if args.json:
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
        hooks = _hooks(args, console)
        failure: JobFailed | None = None
        outcome = None
        with trio.open_signal_receiver(signal.SIGINT) if interruptible else contextlib.nullcontext() as sigint:
            async with trio.open_nursery() as nursery:
                async def on_interrupt() -> None:
                    async for _ in sigint:
                        if cancel.is_set():
                            say("suanli: interrupted again; leaving without the final receipt")
                            nursery.cancel_scope.cancel()
                            return
                        say("suanli: cancelling the job (Ctrl-C again to leave at once)")
                        cancel.set()

                if sigint is not None:
                    nursery.start_soon(on_interrupt)
                try:
                    outcome = await run_job(node, key, store, deal, inputs, image.archive, hooks, cancel, now_ms())
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
        if args.json:
            console.result({"ok": False, "error": message, "agreement_id": deal.agreement.record_id.hex(),
                            "provider": provider, "database": str(db_path), "exit_code": lost,
                            "exit_source": SUANLI})
        return lost
    files = write_outputs(outcome.outputs, Path(args.output), say,
                          force=getattr(args, "force", False)) if args.output else []
    last = outcome.last
    code, source = job_exit_code(outcome.exit_code)
    summary = {
        "ok": True, "agreement_id": deal.agreement.record_id.hex(), "provider": provider,
        "exit_code": code, "reason": outcome.reason, "billed_ms": last.metered_ms if last else 0,
        "amount_micros": last.amount_micros if last else 0, "receipts": len(outcome.receipts),
        "database": str(db_path), "outputs": files, "oom_killed": outcome.oom_killed,
        "exit_source": source,
    }
    if args.json:
        console.result(summary)
    else:
        if outcome.oom_killed:  # issue 17 item 4: the line a user reads says so, not only --json
            say(f"suanli: killed: out of memory (limit {_mib_text(resources.memory_mib)})")
        ended = (f"exit code {code}" if source != SUANLI
                 else f"the job reported no exit code (exit {code}, node.exitcodes)")
        say(f"suanli: {ended} ({outcome.reason}); billed {summary['billed_ms'] / 1000:.3f} s, "
            f"{summary['amount_micros']} micro-credits over {summary['receipts']} co-signed receipts; "
            f"evidence in {db_path}")
    return code


def _mib_text(mib: int) -> str:
    return f"{mib >> 10} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


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
NOT_THE_PROVIDERS = frozenset({"buyer_unresponsive", "image_missing"})


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


def _hooks(args: argparse.Namespace, console: Console) -> Any:
    from node.buyer_job import BuyerHooks

    say = console.say

    def on_receipt(receipt: Any) -> None:
        r = receipt.record
        if args.show_receipts:
            say(f"suanli: receipt {r.seq} co-signed: {r.metered_ms / 1000:.1f} s, {r.amount_micros} micro-credits"
                + (f" (final: {r.reason})" if r.state == "final" else ""))

    def on_status(phase: str, detail: str) -> None:
        if phase in ("paused", "resumed", "loading_image", "logs_dropped", "outputs_skipped") or args.verbose:
            say(f"suanli: provider says {phase}" + (f": {detail}" if detail else ""))

    def on_progress(kind: str, done: int, total: int) -> None:
        if not args.json and (done == total or done % (4 << 20) < (128 << 10)):
            say(f"suanli: sending {kind}: {done * 100 // max(total, 1)}% ({done >> 20}/{total >> 20} MiB)")

    return BuyerHooks(on_log=console.log, on_status=on_status, on_receipt=on_receipt, on_progress=on_progress)
