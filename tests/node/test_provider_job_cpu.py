"""The provider's per-receipt shortcuts give the answers of the general paths they stand in for."""

from __future__ import annotations

import trio
import trio.testing

from node.provider_job import JobRun
from p2p.envelope import Signed, countersign, open_signed, sign_record
from p2p.receipt_records import Receipt
from sandbox.cgroups import CgroupReading
from sandbox.meter import Sampler, grid_start
from sandbox.metering import Meter, MeterSample
from settlement.testing import key_from_label, make_agreement, next_receipt

PROVIDER, BUYER, OTHER = key_from_label("cpu-provider"), key_from_label("cpu-buyer"), key_from_label("cpu-other")


def _issued(n: int = 3) -> tuple[JobRun, list[Signed[Receipt]]]:
    _, _, agreement = make_agreement(PROVIDER, BUYER)
    run = JobRun.__new__(JobRun)  # only the bookkeeping the check reads
    run._issued_by_body = {}
    out, prev, prev_id = [], None, agreement.record_id
    for _ in range(n):
        r = next_receipt(agreement, prev, prev_id)
        signed = sign_record(r, PROVIDER)
        run._issued_by_body[signed.body] = signed
        out.append(signed)
        prev, prev_id = r, signed.record_id
    return run, out


def test_a_countersignature_of_our_receipt_is_taken_as_the_full_check_takes_it():
    run, issued = _issued()
    for mine in issued:
        data = countersign(mine, BUYER).to_bytes()
        fast = run._countersigned_as_issued(data)
        full = open_signed(data, Receipt, min_sigs=2)
        assert fast is not None
        assert (fast.body, fast.record, fast.sigs) == (full.body, full.record, full.sigs)
        assert fast.record_id == full.record_id and fast.is_complete


def test_anything_else_is_left_to_the_full_check():
    run, issued = _issued()
    mine = issued[1]
    good = countersign(mine, BUYER)
    _, _, theirs = make_agreement(PROVIDER, BUYER, nonce=b"\x09" * 16)
    stranger = sign_record(next_receipt(theirs, None, theirs.record_id), PROVIDER)
    cases = {
        "forged buyer signature": Signed(mine.body, mine.record, (mine.sigs[0], bytes(64))).to_bytes(),
        "signed by someone else": Signed(mine.body, mine.record,
                                         (mine.sigs[0], OTHER.sign(good.signed_message(1)))).to_bytes(),
        "another provider signature": Signed(mine.body, mine.record, (bytes(64), good.sigs[1])).to_bytes(),
        "a receipt we did not issue": countersign(stranger, BUYER).to_bytes(),
        "not countersigned": mine.to_bytes(),
        "a short signature": Signed(mine.body, mine.record, (mine.sigs[0], good.sigs[1][:63])).to_bytes(),
        "not msgpack": b"\x93garbage",
        "not an envelope": b"\x90",
    }
    for what, data in cases.items():
        assert run._countersigned_as_issued(data) is None, what


class _Reader:
    source = "test"

    def __init__(self) -> None:
        self.reads = 0

    async def read(self) -> CgroupReading | None:
        self.reads += 1
        return CgroupReading(self.reads * 1_000_000, 1 << 20, 1 << 20, 0, 1)


class _Result:
    def __init__(self, final: MeterSample) -> None:
        self.final = final


class _Job:
    id = "0123456789abcdef"

    def __init__(self) -> None:
        self.exited = trio.Event()
        self.meter = Meter()
        self.meter.event("start", 0)
        self.result: _Result | None = None

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)


async def test_the_sampler_reads_at_once_then_on_the_grid_then_gives_the_final_sample(autojump_clock):
    job, reader = _Job(), _Reader()
    async with trio.open_nursery() as nursery:
        sampler = Sampler(job, reader, None, 1.0, 1)  # type: ignore[arg-type]
        nursery.start_soon(sampler._exit_wakes_the_meter)
        await trio.sleep(0.3)
        first = await sampler.next()
        assert first is not None and trio.current_time() == 0.3 and reader.reads == 1
        times = []
        for _ in range(3):
            sample = await sampler.next()
            assert sample is not None
            times.append(trio.current_time())
        assert times == [1.0, 2.0, 3.0]  # the process's one-second grid, not 1.3, 2.3, ...
        assert grid_start(0.3, 1.0) == 0.0

        async def exit_soon() -> None:
            await trio.sleep(0.5)
            job.result = _Result(job.meter.sample(job.now_ms()))
            job.exited.set()

        nursery.start_soon(exit_soon)
        final = await sampler.next()  # woken by the exit, not by the next grid point
        assert job.result is not None and final is job.result.final and trio.current_time() == 3.5
        assert await sampler.next() is None
        nursery.cancel_scope.cancel()
