"""One rule, two paths (issue 14 item 5): ``open_countersigned`` is ``open_signed``'s fast path for an
envelope we signed coming back with one signature more. For any bytes, when the fast path answers, the
full path accepts the same envelope (body, record, signatures); when the full path accepts our body with
exactly our signatures and one more, the fast path answers too. Everything else is None (the caller
then takes ``open_signed`` and its error).
"""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.envelope import Signed, countersign, open_countersigned, open_signed, sign_record
from p2p.errors import SuanliError
from p2p.receipt_records import Receipt
from settlement.testing import key_from_label, make_chain

PROVIDER, BUYER, OTHER = key_from_label("fast-p"), key_from_label("fast-b"), key_from_label("fast-o")
CHAIN = make_chain(PROVIDER, BUYER, 3)
MINE = [sign_record(r.record, PROVIDER) for r in CHAIN.receipts[:2]]  # what the provider sent
OURS = {s.body: s for s in MINE}
GOOD = [countersign(s, BUYER) for s in MINE]


def _wire(body: object, sigs: object) -> bytes:
    return msgpack.packb({"body": body, "sigs": sigs}, use_bin_type=True)


def _flip(data: bytes, at: int, bit: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1:]


def _cases() -> st.SearchStrategy[bytes]:
    good = st.sampled_from(GOOD)
    third = CHAIN.receipts[2]  # countersigned, but not a body we hold
    return st.one_of(
        good.map(lambda s: s.to_bytes()),
        st.tuples(good, st.integers(0, 1 << 16), st.integers(0, 7)).map(lambda t: _flip(t[0].to_bytes(), t[1], t[2])),
        st.tuples(good, st.integers(0, 400)).map(lambda t: t[0].to_bytes()[: t[1]]),
        st.tuples(good, st.binary(min_size=64, max_size=64)).map(lambda t: _wire(t[0].body, [t[0].sigs[0], t[1]])),
        good.map(lambda s: _wire(s.body, [*s.sigs, s.sigs[1]])),  # one signature too many
        good.map(lambda s: _wire(s.body, list(s.sigs[:1]))),  # ours alone
        good.map(lambda s: _wire(s.body, [s.sigs[1], s.sigs[0]])),
        good.map(lambda s: msgpack.packb({"sigs": list(s.sigs), "body": s.body}, use_bin_type=True)),
        good.map(lambda s: _wire(s.body, [s.sigs[0], s.sigs[1][:63]])),
        good.map(lambda s: _wire(s.body, [s.sigs[0], OTHER.sign(b"suanli/receipt/1/buyer" + s.body + s.sigs[0])])),
        st.just(third.to_bytes()),
        st.binary(max_size=300),
    )


def _full(data: bytes) -> Signed[Receipt] | None:
    try:
        return open_signed(data, Receipt, min_sigs=2)
    except SuanliError:
        return None


@settings(max_examples=500, deadline=None)
@given(_cases())
def test_the_fast_path_answers_exactly_when_the_full_path_accepts_our_envelope_plus_one(data):
    fast = open_countersigned(data, OURS)
    full = _full(data)
    if fast is not None:
        assert full is not None
        assert (fast.body, fast.record, fast.sigs) == (full.body, full.record, full.sigs)
    if full is not None and full.body in OURS and full.sigs[:-1] == OURS[full.body].sigs:
        assert fast is not None


def test_every_good_countersignature_takes_the_fast_path():
    for signed in GOOD:
        fast = open_countersigned(signed.to_bytes(), OURS)
        assert fast is not None and fast.sigs == signed.sigs
