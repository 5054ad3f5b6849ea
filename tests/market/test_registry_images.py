"""market.negotiation Rule 4: registry images pinned by digest in proposals, offers and agreements."""

from __future__ import annotations

from dataclasses import replace

import pytest

from market.capacity import CapacityLedger
from market.deal import Bid, decide
from market.negotiation import (
    BAD_PROPOSAL,
    IMAGE_NOT_ALLOWED,
    check_agreement,
    check_proposal,
    image_allowed,
    image_digest,
    is_registry_image,
)
from p2p.market_records import Limits
from settlement.testing import key_from_label, make_agreement

P, B = key_from_label("provider"), key_from_label("buyer")
OFFER, PROPOSAL, _ = make_agreement(P, B)
NOW = PROPOSAL.record.created_at_ms + 5
DIGEST = "ab" * 32
REF = f"127.0.0.1:5000/suanli/python@sha256:{DIGEST}"


def with_image(image: str, archive: bytes | None = None):
    return replace(PROPOSAL.record, job=replace(PROPOSAL.record.job, image=image, image_archive_sha256=archive))


@pytest.mark.parametrize("image, digest", [
    (f"sha256:{DIGEST}", DIGEST),
    (REF, DIGEST),
    (f"ghcr.io/org/team/app@sha256:{DIGEST}", DIGEST),
    ("ghcr.io/org/app:latest", None),  # a tag pins nothing
    (f"ghcr.io/org/app:1.0@sha256:{DIGEST}", DIGEST),  # syntax only here; sandbox.registry refuses tag+digest
    (f"sha256:{DIGEST[:-1]}", None),
    (f"Ghcr.io/App@sha256:{DIGEST}", None),
])
def test_an_image_is_pinned_by_a_digest_or_is_nothing(image, digest):
    assert image_digest(image) == (bytes.fromhex(digest) if digest else None)


def test_a_tag_or_a_registry_image_with_an_archive_is_a_bad_proposal():
    assert check_proposal(with_image("ghcr.io/org/app:latest"), OFFER.record, P.public, NOW) == BAD_PROPOSAL
    assert check_proposal(with_image(REF, b"\1" * 32), OFFER.record, P.public, NOW) == BAD_PROPOSAL
    assert check_proposal(with_image(REF), OFFER.record, P.public, NOW) is None


def test_allowed_images_list_digests_and_admit_registry_images_by_theirs():
    assert image_allowed(REF, ()) and image_allowed(REF, (f"sha256:{DIGEST}",))
    assert not image_allowed(REF, ("sha256:" + "cd" * 32,))
    offer = replace(OFFER.record, limits=Limits(3600, 4, ("sha256:" + "cd" * 32,)))
    assert check_proposal(with_image(REF), offer, P.public, NOW) == IMAGE_NOT_ALLOWED
    assert is_registry_image(REF) and not is_registry_image(f"sha256:{DIGEST}")


def test_the_bid_records_the_manifest_and_platform_the_provider_resolved():
    proposal = with_image(REF)
    book = CapacityLedger((), 2000, 4096, 4, 8192)
    platform_manifest = b"\2" * 32
    d = decide(proposal, PROPOSAL.record_id, P.public, {OFFER.record_id: OFFER.record}, (), book, NOW, 5000,
               image_manifest=platform_manifest, image_platform="linux/amd64")
    assert isinstance(d, Bid)
    assert (d.agreement.image_manifest, d.agreement.image_platform) == (platform_manifest, "linux/amd64")


def test_the_buyer_checks_the_manifest_an_agreement_names():
    proposal = with_image(REF)
    book = CapacityLedger((), 2000, 4096, 4, 8192)

    def bid(manifest, platform, p=proposal):
        d = decide(p, PROPOSAL.record_id, P.public, {OFFER.record_id: OFFER.record}, (), book, NOW, 5000,
                   image_manifest=manifest, image_platform=platform)
        assert isinstance(d, Bid)
        book.release(d.agreement.record_id())
        return check_agreement(d.agreement, p, PROPOSAL.record_id, NOW)

    assert bid(bytes.fromhex(DIGEST), None) == []
    assert bid(b"\2" * 32, "linux/arm64") == []  # one platform of the named index
    assert bid(None, None) == ["names no manifest for the registry image"]
    assert bid(b"\2" * 32, None) == ["names another manifest than the image's digest"]
    local = with_image(f"sha256:{DIGEST}")
    assert bid(b"\2" * 32, None, local) == ["names a registry manifest for a local image"]
