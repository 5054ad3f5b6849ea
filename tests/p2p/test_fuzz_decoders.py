"""Issue 13, H1: for any bytes, every decoder returns a value or raises the project's remote-input error.

The structure-aware fuzzer (p2p.fuzzing) runs 10,000 frames through each decoder (node.fuzzing): half
from a fixed seed, half from a seed drawn for this run. A failure prints the seed; to replay it:

    SUANLI_FUZZ_SEED=<seed> .venv/bin/python -m pytest tests/p2p/test_fuzz_decoders.py

bench/fuzz.py runs 100,000 per decoder and prints rates and peak memory. The named cases below are
the frames the hostile review sent (a map key as msgpack bin), each through the path it broke.
"""

from __future__ import annotations

import os
import random

import msgpack
import pytest

from node.fuzzing import decoder_targets, target_names
from p2p import job_wire as jobwire
from p2p.codec import unpack
from p2p.envelope import domain, open_countersigned, open_signed, sign_record
from p2p.errors import CodecError, UnusableInputError
from p2p.fuzzing import Mutator, Target, encode, fuzz, seed_trees, to_tree
from p2p.gossip import OfferLedger
from p2p.market_records import Offer
from p2p.receipt_records import Receipt
from settlement.audit import audit, read_inputs
from settlement.bundle import decode_bundle, encode_bundle
from settlement.testing import key_from_label, make_chain

FRAMES_PER_DECODER = 10_000
FIXED_SEED = 13
RUN_SEED = int(os.environ.get("SUANLI_FUZZ_SEED") or random.SystemRandom().randrange(1, 2**31))


@pytest.fixture(scope="module")
def targets():
    with decoder_targets() as found:
        yield {t.name: t for t in found}


@pytest.mark.parametrize("name", target_names())
def test_every_decoder_returns_a_value_or_its_error_for_10000_fuzzed_frames(targets, name):
    target = targets[name]
    results = [fuzz(target, FRAMES_PER_DECODER // 2, seed) for seed in (FIXED_SEED, RUN_SEED)]
    crashes = [c for r in results for c in r.crashes]
    assert not crashes, f"replay with SUANLI_FUZZ_SEED={RUN_SEED}:\n" + "\n".join(map(str, crashes[:5]))
    assert sum(r.frames for r in results) == FRAMES_PER_DECODER
    # Mutations reach past the first check: some frames decode, many are refused with the allowed error.
    assert sum(r.values for r in results) > 0
    if target.allowed:
        assert sum(sum(r.errors.values()) for r in results) > FRAMES_PER_DECODER // 10


def _sorting_decoder(data: bytes) -> object:
    """The pre-fix bug in miniature: sorts a map's keys before checking their type."""
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if type(obj) is not dict or sorted(obj) != ["a", "b", "t"]:
        raise CodecError("not the expected keys")
    return obj


def test_the_fuzzer_finds_the_bin_key_bug_and_replays_it():
    target = Target("sorting", _sorting_decoder, [msgpack.packb({"a": 1, "b": [b"x"], "t": "x"})], (CodecError,))
    first = fuzz(target, 2000, FIXED_SEED)
    assert any("not supported between instances of" in str(c.error) for c in first.crashes)
    again = fuzz(target, 2000, FIXED_SEED)
    assert [(c.index, c.frame) for c in again.crashes] == [(c.index, c.frame) for c in first.crashes]
    assert str(first.crashes[0]).startswith(f"sorting: frame {first.crashes[0].index} of seed {FIXED_SEED}")


def test_seeds_re_encode_byte_for_byte_and_nested_envelopes_are_parsed(evidence):
    env = evidence.receipts[0].to_bytes()
    (tree,) = seed_trees([env])
    assert encode(tree) == env
    body = dict(tree.pairs)["body"]
    assert type(body).__name__ == "Nested"  # mutations reach the receipt inside the envelope
    mutator = Mutator(random.Random(1))
    frames = {mutator.frame(tree) for _ in range(200)}
    assert len(frames) > 120


def test_edge_values_encode_as_msgpack_would():
    for value in (None, True, 0, -1, 2**64 - 1, -(2**63), "x" * 40, b"y" * 300, [1, {"a": b"b"}], {"k": []}):
        assert encode(to_tree(value)) == msgpack.packb(value, use_bin_type=True)


# --- the hostile review's frames, through the paths they broke ---------------------------------------


def _bin_keyed(body: bytes, key: str) -> bytes:
    """``body`` with its top-level ``key`` sent as msgpack bin (same order, same values)."""
    return msgpack.packb({(k.encode() if k == key else k): v for k, v in unpack(body).items()}, use_bin_type=True)


def _signed_body(body: bytes, cls: type, key) -> bytes:
    """An envelope whose signature over ``body`` verifies: what a hostile peer signs with its own key."""
    return msgpack.packb({"body": body, "sigs": [key.sign(domain(cls, cls.SIGNERS[0][0]) + body)]},
                         use_bin_type=True)


def test_a_validly_signed_offer_with_a_bin_key_is_refused_by_gossip_and_by_the_offer_query(provider_key):
    offer = sign_record(make_chain(provider_key, key_from_label("buyer"), 1).offer.record, provider_key)
    hostile = _signed_body(_bin_keyed(offer.body, "addrs"), Offer, provider_key)
    assert len(hostile) < 600
    with pytest.raises(CodecError, match="map keys must be text"):
        open_signed(hostile, Offer)  # p2p.offer_query.fetch_offer's decoder
    signed, verdict = OfferLedger(Offer).judge(hostile, provider_key.public, offer.record.created_at_ms)
    assert signed is None and verdict.startswith("malformed: ") and "map keys must be text" in verdict


@pytest.mark.parametrize("message", [jobwire.Countersign(b"e" * 80), jobwire.Cancel("buyer_cancel"),
                                     jobwire.Chunk("inputs", b"abc"), jobwire.Start(b"a" * 32, 0, 0)])
def test_a_job_frame_with_a_bin_key_is_a_codec_error_for_the_providers_job_handler(message):
    """node.provider_job.read_buyer catches CodecError (a bad frame, counted) and nothing else."""
    for key in ("t", "v", *vars(message)):
        with pytest.raises(CodecError, match="map keys must be text" if key != "t" else "not a job message"):
            jobwire.decode_message(_bin_keyed(message.encode(), key))


def test_a_countersignature_whose_receipt_uses_a_bin_key_is_a_codec_error(evidence, buyer_key, provider_key):
    """The provider's countersignature path: open_countersigned (None), then open_signed (CodecError)."""
    ours = evidence.receipts[0]
    hostile_body = _bin_keyed(ours.body, "seq")
    sig0 = provider_key.sign(b"suanli/receipt/1/provider" + hostile_body)
    sig1 = buyer_key.sign(b"suanli/receipt/1/buyer" + hostile_body + sig0)
    data = msgpack.packb({"body": hostile_body, "sigs": [sig0, sig1]}, use_bin_type=True)
    frame = jobwire.Countersign(data).encode()
    msg = jobwire.decode_message(frame)
    assert open_countersigned(msg.receipt, {ours.body: ours}) is None
    with pytest.raises(CodecError, match="map keys must be text"):
        open_signed(msg.receipt, Receipt, min_sigs=2)


def test_a_bundle_whose_structure_uses_a_bin_key_is_unusable(evidence):
    bundle = unpack(encode_bundle([evidence.stored()]))
    for hostile in ({b"chains": bundle["chains"], "t": "bundle", "v": 1},
                    {"chains": [{**bundle["chains"][0], b"offer": None}], "t": "bundle", "v": 1},
                    {"chains": bundle["chains"], "t": "bundle", "v": [[[[]]]] * 3}):
        with pytest.raises(UnusableInputError):
            decode_bundle(msgpack.packb(hostile, use_bin_type=True))


def test_a_bin_key_inside_a_signed_record_of_a_bundle_is_a_finding(evidence, tmp_path, provider_key, buyer_key):
    """Audit Rule 1: a usable file with something wrong inside is a finding, never an exception."""
    stored = evidence.stored()
    receipts = list(stored.receipts)
    receipts[0] = dict(receipts[0], body=_bin_keyed(receipts[0]["body"], "seq"))
    agreement = dict(stored.agreement)
    chain = {"agreement": agreement, "offer": dict(stored.offer, body=_bin_keyed(stored.offer["body"], "seq")),
             "proposal": stored.proposal, "receipts": receipts}
    path = tmp_path / "hostile.bundle"
    path.write_bytes(msgpack.packb({"chains": [chain], "t": "bundle", "v": 1}, use_bin_type=True))
    (result,) = audit(read_inputs([path]))
    kinds = [f.rule for f in result.report.findings]
    assert "malformed" in kinds, kinds
    assert any("map keys must be text" in f.detail for f in result.report.findings)

