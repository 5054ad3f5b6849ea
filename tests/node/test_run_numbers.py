"""L6 for the buyer: every numeric option of `suanli run` has a range, and a value outside it is one line
and exit 125 (node.exitcodes) before the network is joined (before: --max-price 2^70 and --gpu-memory 2^70 ended in an
OverflowError while signing the proposal, --candidates -5 in an IndexError, --cpus nan in a ValueError)."""

from __future__ import annotations

import pytest

from node.config import RUN_RANGES, check_run_numbers
from p2p.errors import ConfigError

BAD = {
    "gpus": ["-1", "65", str(2**70)],
    "gpu_memory": ["-1", str(2**70)],
    "cpus": ["nan", "inf", "-1", "0", "1e300"],
    "max_price": ["-1", str(2**70)],
    "max_duration": ["0", "-1", str(2**63 - 1)],
    "wait": ["nan", "-1", "1e300"],
    "candidates": ["0", "-5", str(2**63)],
    "negotiate_timeout": ["nan", "0", "-1", "inf"],
}


def test_every_range_is_tested():
    assert set(BAD) == set(RUN_RANGES)


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in BAD.items() for v in vs])
def test_out_of_range_options_are_one_line_before_joining(tmp_path, capsys, name, value):
    from node.cli import main
    from node.exitcodes import EXIT_SUANLI

    flag = "--" + name.replace("_", "-")
    code = main(["run", "--no-agent", "--local", "--data-dir", str(tmp_path / "buyer"),
                 "--bootstrap", "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWQgxNqkkbcNdQU34ngX72n9izZc4xaodSBz9kbttwibaQ",
                 "--image", "sha256:" + "0" * 64, flag, value, "--", "true"])
    out, err = capsys.readouterr()
    assert code == EXIT_SUANLI and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"suanli: error: {flag}: expected a number in ") and "Traceback" not in err


def test_values_at_the_ends_of_each_range_pass():
    for name, (lo, hi) in RUN_RANGES.items():
        check_run_numbers({name: lo})
        check_run_numbers({name: hi})
        with pytest.raises(ConfigError):
            check_run_numbers({name: True})  # a JSON true from an agent request is not a number
    check_run_numbers({"gpu_memory": None})


@pytest.mark.parametrize("value", ["9" * 400, "99999999999999999999g", "16385g"])
def test_memory_beyond_sixteen_tib_is_one_line(tmp_path, capsys, value):
    from node.cli import main
    from node.exitcodes import EXIT_SUANLI

    code = main(["run", "--no-agent", "--local", "--data-dir", str(tmp_path / "buyer"),
                 "--bootstrap", "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWQgxNqkkbcNdQU34ngX72n9izZc4xaodSBz9kbttwibaQ",
                 "--image", "sha256:" + "0" * 64, "--memory", value, "--", "true"])
    out, err = capsys.readouterr()
    assert code == EXIT_SUANLI and err.count("\n") == 1 and "--memory" in err and "Traceback" not in err, err
