"""The offline audit: from bundles and node databases alone, verify every agreement and say who owes
whom. Used by ``suanli audit`` and ``suanli settle``.

Rule 1: inputs are hostile. A file that is not a bundle or a Suanli database is unusable (the caller
exits 2); anything wrong inside a usable file is a Finding (exit 1), never an exception.
Rule 2: the same agreement may come from several inputs (both parties' databases, bundles): its
receipts are merged by body, so an identical receipt seen twice is one receipt, while a receipt
repeated inside one input is a duplicate and two different receipts for one seq are equivocation.
Rule 3: work is spread over processes by agreement; the result does not depend on ``jobs``.
Rule 4 (issue 13, L2): an input is a regular file no larger than its limit (``MAX_BUNDLE_BYTES``,
``MAX_DATABASE_BYTES``), checked before it is read; a database is opened read-only with its schema
distrusted and its reading time bounded (settlement.store Rule 5).
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path
from typing import Any

from p2p.envelope import Signed, signed_from_wire, signed_list_from_wire
from p2p.errors import CodecError, SignatureError, UnusableInputError
from p2p.market_records import Agreement, Offer, Proposal
from p2p.receipt_records import Receipt
from settlement.bundle import decode_bundle
from settlement.chain import ChainReport, Finding, verify_chain
from settlement.dbread import DatabaseChain, read_database
from settlement.store import SQLITE_MAGIC, Store

MAX_BUNDLE_BYTES = 1 << 30  # docs/PROTOCOL.md section 1: a bundle is at most 1 GiB
MAX_DATABASE_BYTES = 16 << 30  # a node database: read by sqlite page by page, under a time limit


@dataclass
class ChainJob:
    """One agreement's evidence gathered from every input that holds it."""

    agreement_id: bytes
    agreements: list[dict[str, Any]] = field(default_factory=list)
    offer: dict[str, Any] | None = None
    proposal: dict[str, Any] | None = None
    receipts: list[list[dict[str, Any]]] = field(default_factory=list)  # one list per input
    sources: list[str] = field(default_factory=list)  # the input of each list of receipts
    agreement_sources: list[str] = field(default_factory=list)  # the input of each copy of the agreement
    notes: list[Finding] = field(default_factory=list)  # what reading the inputs found (settlement.dbread)

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.receipts) + 1


@dataclass
class ChainAudit:
    report: ChainReport
    sources: list[str]


@contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector (reference counting still frees everything at once).

    Decoding makes millions of containers and no reference cycles; left on, the collector would run
    every few hundred allocations and traverse every object already decoded (msgpack's advice for
    large inputs). Restores the collector's state, so nesting and other callers are unaffected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_cycle_collection_paused()
def read_inputs(paths: Iterable[str | Path]) -> list[ChainJob]:
    """Load every input into per-agreement jobs; UnusableInputError for an unusable file."""
    jobs: dict[bytes, ChainJob] = {}
    for path in paths:
        for chain in _read_one(Path(path)):
            job = jobs.get(chain.agreement_id)
            if job is None:
                job = jobs[chain.agreement_id] = ChainJob(chain.agreement_id)
            if chain.agreement is not None:
                job.agreements.append(chain.agreement)
                job.agreement_sources.append(str(path))
            job.offer = job.offer or chain.offer
            job.proposal = job.proposal or chain.proposal
            job.receipts.append(chain.receipts)
            job.sources.append(str(path))
            job.notes.extend(chain.notes)
    return list(jobs.values())


def _read_one(path: Path) -> list[DatabaseChain]:
    """Rule 4: a regular file within its size limit, checked before a byte is read (no device, FIFO or
    directory); a database is then read by the store under its own rules (settlement.store Rule 5)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnusableInputError(f"{path}: no such file", path=str(path)) from None
    except OSError as exc:
        raise UnusableInputError(f"{path}: {exc.strerror}", path=str(path)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            what = "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
            raise UnusableInputError(f"{path}: {what}, not a bundle or database", path=str(path))
        with FileIO(fd, "rb", closefd=True) as fh:
            head = fh.read(len(SQLITE_MAGIC))
            is_database = head == SQLITE_MAGIC
            limit = MAX_DATABASE_BYTES if is_database else MAX_BUNDLE_BYTES
            if st.st_size > limit:
                raise UnusableInputError(f"{path}: larger than the {limit >> 20} MiB an input may be",
                                         path=str(path))
            data = b"" if is_database else _read_all(fh, limit)  # a database is read by the store
    except OSError as exc:
        raise UnusableInputError(f"{path}: {exc.strerror}", path=str(path)) from exc
    if is_database:
        with Store(path, readonly=True) as store:
            return read_database(store)
    if not data:
        raise UnusableInputError(f"{path}: empty file", path=str(path))
    # A bundle's structure says which agreement each list of receipts is for (settlement.bundle).
    return [DatabaseChain(hashlib.sha256(c.agreement["body"]).digest(), c.agreement, c.offer, c.proposal,
                          c.receipts) for c in decode_bundle(data, str(path))]


def _read_all(fh: FileIO, limit: int) -> bytes:
    """The whole (regular, so seekable) file in one piece, so that a large bundle is copied into memory
    once (reading on, then joining, copies it three times). A file that grew past ``limit`` since it
    was measured is refused."""
    fh.seek(0)
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnusableInputError(f"{fh.name}: larger than the {limit >> 20} MiB an input may be")
    return data


def _decode(obj: dict[str, Any], cls: type[Any], what: str, min_sigs: int = 1) -> tuple[Signed[Any] | None,
                                                                                        Finding | None]:
    try:
        return signed_from_wire(obj, cls, min_sigs=min_sigs, verify=False), None
    except (CodecError, SignatureError) as exc:
        return None, Finding("malformed", f"{what}: {exc}")


@_cycle_collection_paused()
def audit_chain(job: ChainJob) -> ChainAudit:
    """Verify one agreement's evidence (runs in a worker process with ``jobs`` > 1)."""
    pre: list[Finding] = list(job.notes)
    if not job.agreements:
        return ChainAudit(_without_agreement(job, pre), job.sources)
    agreement: Signed[Agreement] | None = None
    sources = job.agreement_sources or job.sources
    names = sources + [f"input {i + 1}" for i in range(len(sources), len(job.agreements))]
    copies = list(zip(job.agreements, names, strict=False))
    for env, src in sorted(copies, key=lambda c: -len(c[0]["sigs"])):
        candidate, problem = _decode(env, Agreement, "agreement")
        if candidate is None:
            pre.append(problem)  # type: ignore[arg-type]
        elif len(copies) > 1 and not _signatures_ok(candidate):
            pre.append(Finding("agreement_signature", f"the copy in {src} has a signature that does not verify"))
        elif agreement is None:
            agreement = candidate
    if agreement is None and copies:  # every copy is bad: let verify_chain report the first one
        agreement, _ = _decode(copies[0][0], Agreement, "agreement")
    if agreement is None:
        report = ChainReport(job.agreement_id, b"\0" * 32, b"\0" * 32, 0, state="unreadable", findings=pre)
        return ChainAudit(report, job.sources)
    ag = agreement.record
    pre.extend(_check_origin(job, ag))

    if len(job.receipts) == 1:
        receipts, inputs = _well_formed(job.receipts[0], Receipt, "receipt", pre), None
    else:
        inputs_named = job.sources + [f"input {i + 1}" for i in range(len(job.sources), len(job.receipts))]
        receipts, inputs = _merge(job.receipts, inputs_named, pre)
    report = verify_chain(agreement, receipts, inputs)
    report.findings[:0] = pre
    return ChainAudit(report, job.sources)


def _without_agreement(job: ChainJob, pre: list[Finding]) -> ChainReport:
    """Receipts whose agreement no input holds (settlement.dbread Rule 2): reported, owed nothing."""
    n = sum(len(r) for r in job.receipts)
    parties = (b"\0" * 32, b"\0" * 32)
    for env in (e for receipts in job.receipts for e in receipts):
        signed, _ = _decode(env, Receipt, "receipt")
        if signed is not None:
            parties = (signed.record.provider, signed.record.buyer)
            break
    pre.append(Finding("no_agreement", f"{n} receipt(s) name agreement {job.agreement_id.hex()[:16]}, which no "
                       "input holds"))
    return ChainReport(job.agreement_id, *parties, 0, state="no_agreement", receipts=n, findings=pre)


def _well_formed(envs: list[dict[str, Any]], cls: type[Any], what: str, problems: list[Finding]
                 ) -> list[Signed[Any]]:
    """The envelopes that decode, in order, with a 'malformed' Finding in ``problems`` for each other."""
    try:
        return signed_list_from_wire(envs, cls, verify=False)
    except (CodecError, SignatureError):
        pass  # one at least is malformed: decode them one by one to report each
    out = []
    for env in envs:
        signed, problem = _decode(env, cls, what)
        if signed is None:
            problems.append(problem)  # type: ignore[arg-type]
        else:
            out.append(signed)
    return out


def _merge(sources: list[list[dict[str, Any]]], names: list[str], pre: list[Finding]
           ) -> tuple[list[Signed[Receipt]], list[int]]:
    """One list from the receipts of several inputs (Rule 2), input after input, and the input of each:
    a body already listed by an earlier input is merged into that copy (the best signatures kept) and
    listed again as ``-1 - input``, a copy that counts only for the order of its input; verify_chain
    judges duplicates within an input, equivocation, and order within each input (docs/PROTOCOL.md §5,
    "Several inputs")."""
    receipts: list[Signed[Receipt]] = []
    inputs: list[int] = []
    kept_source: list[str] = []
    by_body: dict[bytes, int] = {}
    for number, (source_list, source) in enumerate(zip(sources, names, strict=False)):
        local: set[bytes] = set()
        for env in source_list:
            signed, problem = _decode(env, Receipt, "receipt")
            if signed is None:
                pre.append(problem)  # type: ignore[arg-type]
                continue
            body = signed.body
            if body in by_body and body not in local:
                # The same receipt from another input (Rule 2): copies whose signatures differ are
                # each verified, a bad copy is reported with its input, the best good one is kept.
                index = by_body[body]
                kept = receipts[index]
                if signed.sigs != kept.sigs:
                    new_ok, kept_ok = _signatures_ok(signed), _signatures_ok(kept)
                    bad = None if new_ok and kept_ok else (source if not new_ok else kept_source[index])
                    if bad is not None:
                        pre.append(Finding("receipt_signature", f"the copy in {bad} has a signature that "
                                           "does not verify", signed.record.seq, signed.record_id))
                    if (new_ok and not kept_ok) or (new_ok and len(signed.sigs) > len(kept.sigs)):
                        receipts[index] = signed
                        kept_source[index] = source
                local.add(body)
                receipts.append(signed)  # listed again only for the order of this input
                inputs.append(-1 - number)
                kept_source.append(source)
                continue
            local.add(body)
            by_body.setdefault(body, len(receipts))
            receipts.append(signed)
            inputs.append(number)
            kept_source.append(source)
    return receipts, inputs


def _signatures_ok(signed: Signed[Any]) -> bool:
    try:
        signed.verify()
    except SignatureError:
        return False
    return True


def _check_origin(job: ChainJob, ag: Agreement) -> list[Finding]:
    """The offer and proposal the agreement names, where the input carries them (docs/PROTOCOL.md §5,
    "Origin"): the offer's id, provider and terms; the proposal's id, parties, offer, job, resources,
    terms and duration; the price within the buyer's maximum; both signatures. One finding per record."""
    out: list[Finding] = []
    if job.offer is not None:
        offer, problem = _decode(job.offer, Offer, "offer")
        if offer is None:
            out.append(problem)  # type: ignore[arg-type]
        else:
            if offer.record_id != ag.offer_id or offer.record.provider != ag.provider:
                out.append(Finding("origin_mismatch", "the offer is not the one the agreement names"))
            elif offer.record.terms != ag.terms:
                out.append(Finding("origin_mismatch", "the agreement's receipt terms are not the offer's"))
            try:
                offer.verify()
            except SignatureError as exc:
                out.append(Finding("offer_signature", str(exc)))
    if job.proposal is not None:
        proposal, problem = _decode(job.proposal, Proposal, "proposal")
        if proposal is None:
            out.append(problem)  # type: ignore[arg-type]
        else:
            p = proposal.record
            if proposal.record_id != ag.proposal_id or p.buyer != ag.buyer or p.provider != ag.provider:
                out.append(Finding("origin_mismatch", "the proposal is not the one the agreement names"))
            elif differs := [name for name in ("offer_id", "job", "resources", "terms", "max_duration_ms")
                             if getattr(p, name) != getattr(ag, name)]:
                out.append(Finding("origin_mismatch", f"the agreement's {', '.join(differs)} differ from the "
                                   "proposal's"))
            elif ag.price_micros_per_s > p.max_price_micros_per_s:
                out.append(Finding("origin_mismatch", f"agreed price {ag.price_micros_per_s} exceeds the "
                                   f"buyer's maximum {p.max_price_micros_per_s}"))
            try:
                proposal.verify()
            except SignatureError as exc:
                out.append(Finding("proposal_signature", str(exc)))
    return out


def audit(jobs_in: Sequence[ChainJob], jobs: int = 1) -> list[ChainAudit]:
    """Audit every chain, over ``jobs`` processes; results in input order."""
    jobs = max(1, min(jobs, os.cpu_count() or 1, len(jobs_in) or 1))
    if jobs == 1:
        return [audit_chain(job) for job in jobs_in]
    # Largest first so that one long chain does not finish last on its own; then restore the order.
    order = sorted(range(len(jobs_in)), key=lambda i: -jobs_in[i].size)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        results = pool.map(audit_chain, [jobs_in[i] for i in order], chunksize=1)
    out: list[ChainAudit | None] = [None] * len(jobs_in)
    for i, result in zip(order, results, strict=True):
        out[i] = result
    return out  # type: ignore[return-value]
