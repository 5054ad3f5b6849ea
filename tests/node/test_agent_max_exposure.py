"""`suanli run --max-exposure` travels to the resident agent (issue 13, H3), within its range."""

from __future__ import annotations

import json

import pytest

from node.agent import RequestError, parse_run_request
from node.agent_client import run_request
from node.buyer_config import MAX_EXPOSURE_RANGE
from node.cli import build_parser


def _line(*argv: str) -> bytes:
    args = build_parser().parse_args(["run", "--image", "sha256:" + "a" * 64, *argv, "--", "true"])
    return json.dumps(run_request(args, ["true"])).encode()


def test_the_flag_reaches_the_agent_and_its_absence_means_the_agents_own_setting():
    assert parse_run_request(_line("--max-exposure", "2500"))[0].max_exposure == 2500
    assert parse_run_request(_line())[0].max_exposure is None


@pytest.mark.parametrize("value", [-1, MAX_EXPOSURE_RANGE[1] + 1])
def test_out_of_range_is_refused_by_the_agent(value):
    request = json.loads(_line())
    request["args"]["max_exposure"] = value
    with pytest.raises(RequestError, match="max_exposure"):
        parse_run_request(json.dumps(request).encode())
