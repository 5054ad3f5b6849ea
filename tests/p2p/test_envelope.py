"""Signed envelopes: domains, signer order, countersignatures, verification on arrived bytes."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest

from p2p.codec import unpack
from p2p.envelope import Signed, countersign, domain, open_signed, sign_record, signed_from_wire, signed_list_from_wire
from p2p.errors import CodecError, LocalProtocolError, SignatureError
from p2p.market_records import Agreement
from p2p.receipt_records import Receipt
from settlement.testing import key_from_label


def test_agreement_round_trip_with_both_signatures(evidence):
    data = evidence.agreement.to_bytes()
    opened = open_signed(data, Agreement, min_sigs=2)
    assert opened.is_complete and opened.record == evidence.agreement.record
    assert opened.record_id == evidence.agreement.record.record_id()


def test_countersignature_covers_the_first_signature(evidence, buyer_key):
    ag = evidence.agreement
    other_first = bytes(64)  # any other "provider signature" invalidates the buyer's
    forged = Signed(ag.body, ag.record, (other_first, ag.sigs[1]))
    with pytest.raises(SignatureError, match="provider signature"):
        forged.verify()


def test_signature_from_another_domain_does_not_verify(evidence, provider_key):
    r = evidence.receipts[0]
    wrong_domain = provider_key.sign(domain(Agreement, "provider") + r.body)
    with pytest.raises(SignatureError):
        Signed(r.body, r.record, (wrong_domain,)).verify()


def test_swapped_signers_do_not_verify(evidence):
    r = evidence.receipts[0]
    with pytest.raises(SignatureError):
        Signed(r.body, r.record, (r.sigs[1], r.sigs[0])).verify()


def test_only_the_named_key_may_sign(evidence, buyer_key, provider_key):
    record = evidence.receipts[0].record
    with pytest.raises(LocalProtocolError):
        sign_record(record, buyer_key)  # the provider signs first
    with pytest.raises(LocalProtocolError):
        countersign(sign_record(record, provider_key), key_from_label("stranger"))
    full = countersign(sign_record(record, provider_key), buyer_key)
    with pytest.raises(LocalProtocolError):
        countersign(full, buyer_key)


def test_record_naming_another_key_fails_verification(evidence, provider_key):
    stranger = key_from_label("stranger")
    record = replace(evidence.receipts[0].record, provider=stranger.public)
    signed = sign_record(record, stranger)
    tampered = Signed(signed.body, signed.record, (provider_key.sign(signed.signed_message(0)),))
    with pytest.raises(SignatureError):
        tampered.verify()


@pytest.mark.parametrize("min_sigs, n", [(2, 1), (1, 0)])
def test_signature_count_is_enforced(evidence, provider_key, min_sigs, n):
    signed = sign_record(evidence.receipts[0].record, provider_key)
    partial = Signed(signed.body, signed.record, signed.sigs[:n])
    with pytest.raises(SignatureError):
        open_signed(partial.to_bytes(), Receipt, min_sigs=min_sigs)


def test_wrong_record_type_is_a_codec_error(evidence):
    with pytest.raises(CodecError, match="Agreement"):
        open_signed(evidence.receipts[0].to_bytes(), Agreement)


def test_every_byte_of_an_envelope_matters(evidence):
    data = evidence.receipts[0].to_bytes()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x04
        with pytest.raises((CodecError, SignatureError)):
            open_signed(bytes(bad), Receipt, min_sigs=2)


def test_a_list_of_envelopes_decodes_as_each_alone(evidence):
    envelopes = [r.to_wire() for r in evidence.receipts]
    decoded = signed_list_from_wire(envelopes, Receipt, verify=True)
    assert decoded == [signed_from_wire(e, Receipt) for e in envelopes] == evidence.receipts
    assert [s.record_id for s in decoded] == [s.record_id for s in evidence.receipts]
    assert vars(decoded[0]).keys() >= {"body", "record", "sigs"} and type(decoded[0].sigs) is tuple


def test_the_first_bad_envelope_in_a_list_raises_what_it_raises_alone(evidence):
    good, bad_sig, short = (r.to_wire() for r in evidence.receipts[:3])
    bad_sig["sigs"] = [bad_sig["sigs"][0], bytes(64)]
    short["sigs"] = [short["sigs"][0][:63]]
    with pytest.raises(CodecError, match="a signature is not 64 bytes"):
        signed_list_from_wire([good, bad_sig, short], Receipt, verify=False)
    with pytest.raises(SignatureError, match="buyer signature"):
        signed_list_from_wire([good, bad_sig, short], Receipt)


def test_bin_keys_in_an_envelope_or_in_its_validly_signed_body_are_codec_errors(evidence, provider_key):
    ag = evidence.agreement
    with pytest.raises(CodecError):
        open_signed(msgpack.packb({b"body": ag.body, "sigs": list(ag.sigs)}, use_bin_type=True), Agreement)
    body = msgpack.packb({(k.encode() if k == "buyer" else k): v for k, v in unpack(ag.body).items()},
                         use_bin_type=True)
    sig = provider_key.sign(domain(Agreement, "provider") + body)  # the signer's own, valid signature
    with pytest.raises(CodecError, match="map keys must be text"):
        open_signed(msgpack.packb({"body": body, "sigs": [sig]}, use_bin_type=True), Agreement)
