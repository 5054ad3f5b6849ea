"""The buyer's exit code for a preempted job (node.exitcodes Rule 2, issue 18)."""

from __future__ import annotations

from node.buyer import reputation_outcome
from node.exitcodes import EXIT_PREEMPTED, MEANINGS, epilog, final_exit_code


def test_a_preempted_job_exits_124_whatever_its_container_died_with():
    assert final_exit_code("owner_preempt", 137) == (EXIT_PREEMPTED, "suanli") == (124, "suanli")
    assert final_exit_code("owner_preempt", None) == (124, "suanli")
    assert final_exit_code("completed", 3) == (3, "job")
    assert final_exit_code("provider_fault", None) == (127, "suanli")


def test_the_code_is_in_the_table_and_the_run_help():
    assert "owner_preempt" in MEANINGS[124]
    assert "  124  preempted" in epilog()


def test_an_announced_preemption_is_not_held_against_the_provider():
    assert reputation_outcome("owner_preempt", None) is None
