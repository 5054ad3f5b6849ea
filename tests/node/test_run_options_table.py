"""Issue 17 item 5: every ``suanli run`` option fed its edge values (0, negative, huge, malformed) through
the real CLI, a subprocess each. Each mistake is one line on stderr, exit 125 (node.exitcodes), nothing
on stdout, and nothing created on disk: no key, no database, no data directory (the test's HOME is a
temporary folder, tests/conftest.py Rule 1). Validation fails before any network, so the bootstrap
address given (a closed port) is never dialled and each case takes well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.exitcodes import EXIT_SUANLI

BOOT = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWQgxNqkkbcNdQU34ngX72n9izZc4xaodSBz9kbttwibaQ"
IMAGE = "sha256:" + "0" * 64
HUGE = str(2**70)

# (option, value or None for a flag's absence, what the line must mention). "{tmp}" is the case's folder,
# where "file" is a regular file and "full" a directory with a file in it.
CASES: list[tuple[str, str, str]] = [
    *[("--cpus", v, "--cpus") for v in ("0", "-1", "nan", "inf", "1e300", "two", "")],
    *[("--memory", v, "--memory") for v in ("0", "-1", "5m", "1.5.5g", "9" * 80, HUGE + "g", "lots", "", "1.5x")],
    *[("--disk", v, "--disk") for v in ("0", "-1", "1.5g", "1k", HUGE + "g", "big", "")],
    *[("--gpus", v, "--gpus") for v in ("-1", "65", HUGE, "1.5", "x")],
    *[("--gpu-memory", v, "--gpu-memory") for v in ("-1", HUGE, "x")],
    *[("--max-price", v, "--max-price") for v in ("-1", HUGE, "1.5", "x")],
    *[("--max-duration", v, "--max-duration") for v in ("0", "-1", HUGE, "x")],
    *[("--max-exposure", v, "--max-exposure") for v in ("-1", HUGE, "x")],
    *[("--wait", v, "--wait") for v in ("-1", "nan", "1e300", "x")],
    *[("--candidates", v, "--candidates") for v in ("0", "-5", HUGE, "x")],
    *[("--negotiate-timeout", v, "--negotiate-timeout") for v in ("0", "-1", "nan", "inf", "x")],
    *[("--env", v, "--env") for v in ("NOEQUALS", "1A=b", "=x", "A B=c")],
    ("--image", "busybox:latest", "pin the image"), ("--image", "", "--image"), ("--image", "sha256:abc", "--image"),
    ("--image-archive", "{tmp}/missing.tar", "--image-archive"), ("--image-archive", "{tmp}", "--image-archive"),
    ("--input", "{tmp}/missing", "--input"), ("--input", "{tmp}/file", "--input"),
    ("--output", "{tmp}/file", "--output"), ("--output", "{tmp}/full", "not empty"),
    ("--data-dir", "{tmp}/file", "--data-dir"),
    ("--key", "{tmp}/typo.key", "does not exist"),
    ("--bootstrap", "not-an-address", "--bootstrap"), ("--bootstrap", "/ip4/127.0.0.1/tcp/9", "/p2p/"),
    ("--agent", "{tmp}/no-agent.sock", "no buyer agent answers"),
]


def _args(option: str, value: str, tmp: Path) -> list[str]:
    base = {"--bootstrap": BOOT, "--image": IMAGE}
    base[option] = value.replace("{tmp}", str(tmp))
    args = ["run", "--local"] + ([] if option == "--agent" else ["--no-agent"])
    for name, val in base.items():
        args += [f"{name}={val}"]  # --opt=VALUE, so a value that starts with "-" is a value
    return [*args, "--", "true"]


def _run(case: tuple[str, str, str], root: Path) -> tuple[tuple[str, str, str], subprocess.CompletedProcess[str]]:
    option, value, _ = case
    tmp = root / f"case{CASES.index(case)}"
    tmp.mkdir()
    (tmp / "file").write_text("x")
    (tmp / "full").mkdir()
    (tmp / "full" / "kept").write_text("x")
    done = subprocess.run([sys.executable, "-m", "node.cli", *_args(option, value, tmp)], capture_output=True,
                          text=True, timeout=120, cwd=tmp)
    return case, done


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_every_run_option_refuses_its_edge_values_in_one_line_with_nothing_created(tmp_path, private_home):
    data_dir = Path(os.environ["SUANLI_HOME"])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: _run(c, tmp_path), CASES))
    failures = []
    for (option, value, needle), done in results:
        lines = done.stderr.splitlines()
        if not (done.returncode == EXIT_SUANLI and len(lines) == 1 and needle in lines[0] and done.stdout == ""
                and "Traceback" not in done.stderr):
            failures.append(f"{option}={value!r}: exit {done.returncode}, stdout {done.stdout!r}, stderr {lines}")
    assert not failures, "\n".join(failures)
    assert not data_dir.exists() and _tree(private_home) == []  # no key, no database, no data directory
    for i in range(len(CASES)):  # nothing written beside the prepared files either
        assert _tree(tmp_path / f"case{i}") == ["file", "full", "full/kept"]


def test_the_options_a_provider_could_be_blamed_for_are_in_the_table():
    """A buyer's mistake is never recorded against a provider: each numeric or size option that reaches a
    proposal is refused here, before any negotiation (--cpus 0 once ended as provider_fault)."""
    from node.config import RUN_RANGES

    tested = {option for option, _, _ in CASES}
    assert {"--" + name.replace("_", "-") for name in RUN_RANGES} <= tested
    assert {"--memory", "--disk", "--env", "--image", "--key", "--max-exposure"} <= tested


@pytest.mark.parametrize("value, mib", [("1.5g", 1536), ("0.75g", 768)])
def test_fractional_memory_passes_the_checks(tmp_path, value, mib):
    """--memory 1.5g was refused; it now reaches the dry run's proposal (checked here up to the network)."""
    from node.buyrequest import parse_memory_mib

    assert parse_memory_mib(value) == mib
