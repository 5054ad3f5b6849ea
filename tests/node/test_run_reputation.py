"""Issue 17 item 5, Rule 2 of node.buyer: what one run records of its provider in the buyer's local
reputation; a buyer's own mistake or choice is never recorded against the provider."""

from __future__ import annotations

import pytest

from market.reputation import COMPLETED, FAILED
from node.buyer import reputation_outcome

CASES = [
    # (final receipt's reason, the JobFailed reason, what is recorded)
    ("completed", None, COMPLETED),
    ("buyer_cancel", None, COMPLETED),
    ("deadline", None, COMPLETED),  # the buyer's own --max-duration: was FAILED before issue 17
    ("buyer_unresponsive", None, None),  # the buyer stopped countersigning
    ("provider_fault", None, FAILED),
    ("provider_shutdown", None, FAILED),
    ("provider_restart", None, FAILED),
    ("owner_preempt", None, None),  # announced preemptible capacity: the owner came back (issue 18)
    ("killed_externally", None, FAILED),
    (None, "provider_lost", FAILED),
    (None, "bad_receipt", FAILED),
    (None, "timeout", FAILED),
    (None, "disk_full", FAILED),
    (None, "image_missing", None),  # the buyer named an image the provider lacks and shipped no archive
    (None, None, None),  # the buyer left (Ctrl-C twice) before the end: was FAILED before issue 17
]


@pytest.mark.parametrize("final_reason, failure_reason, recorded", CASES)
def test_what_a_run_records_of_its_provider(final_reason, failure_reason, recorded):
    assert reputation_outcome(final_reason, failure_reason) == recorded
