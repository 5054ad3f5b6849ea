"""``suanli offers --image IMAGE`` (node.commands.network Rule 1): only offers whose provider holds the image,
matched by digest whether the buyer names a local id or a registry reference; each row names the images
held and the availability; a value that pins nothing is one line and exit code 2, before any network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from market.offers import ProviderTerms, build_offer
from node.commands.network import availability_note, offer_rows, wanted_image
from p2p.envelope import sign_record
from p2p.errors import SuanliError
from p2p.identity import peer_id_from_public
from p2p.market_records import Limits, Prices, ReceiptTerms
from settlement.testing import key_from_label

NOW = 1_800_000_000_000
HELD = bytes.fromhex("ab" * 32)
TERMS = ProviderTerms(Prices({}, 50, 10), Limits(3600, 2, ()), ReceiptTerms(1000, 3000, 5000, 10_000))


def signed_offer(label: str, images: tuple[bytes, ...] = (), **availability: object):
    key = key_from_label(label)
    offer = build_offer(key.public, ["/ip4/127.0.0.1/tcp/1"], TERMS, [], 2000, 4096, [], 2000, 4096, 1, NOW,
                        images=images, **availability)  # type: ignore[arg-type]
    return sign_record(offer, key)


def test_wanted_image_is_the_digest_of_a_local_id_or_a_registry_reference():
    assert wanted_image(None) is None
    assert wanted_image("sha256:" + "ab" * 32) == HELD
    assert wanted_image("127.0.0.1:5000/team/py@sha256:" + "ab" * 32) == HELD
    for bad in ("python:3.12", "127.0.0.1:5000/team/py:latest", "sha256:abc"):
        with pytest.raises(SuanliError):
            wanted_image(bad)


def test_rows_filter_by_the_image_held_and_carry_images_and_availability():
    holder = signed_offer("holder", images=(bytes(32), HELD), window_end_ms=NOW + 3_600_000, notice_ms=30_000,
                          preemptible=True)
    other = signed_offer("other", images=(bytes(32),))
    everyone = offer_rows([holder, other])
    assert {r["provider"] for r in everyone} == {peer_id_from_public(o.record.provider) for o in (holder, other)}
    (row,) = offer_rows([holder, other], HELD)
    assert row["provider"] == peer_id_from_public(holder.record.provider)
    assert row["images"] == ["sha256:" + "00" * 32, "sha256:" + "ab" * 32]
    assert (row["window_end_ms"], row["notice_ms"], row["preemptible"]) == (NOW + 3_600_000, 30_000, True)
    assert json.loads(json.dumps(row)) == row  # --json prints it as is
    (plain,) = offer_rows([other], bytes(32))
    assert (plain["window_end_ms"], plain["notice_ms"], plain["preemptible"]) == (None, 0, False)
    assert offer_rows([holder, other], bytes.fromhex("cd" * 32)) == []
    assert availability_note(plain) == ""
    assert availability_note(row).endswith(", preemptible (30 s notice)") and availability_note(row).startswith(
        ", until ")


def test_a_tag_is_one_line_and_exit_2_before_any_network():
    done = subprocess.run([sys.executable, "-m", "node.cli", "offers", "--image", "python:3.12", "--bootstrap",
                           "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().count("\n") == 0 and "pin the image" in done.stderr, done.stderr
    assert done.stdout == ""
