"""`suanli status | head` (issue 17 item 11): a reader that stops early ends the command quietly, exit 0 and
nothing on stderr, as it ends `ls`; before, a BrokenPipeError traceback. The control socket is the real
one (node.control), serving a status with many jobs so that the output outgrows the pipe."""

from __future__ import annotations

import sys

import trio

from node.control import SOCKET_NAME, serve_control


def _status() -> dict:
    job = {"agreement_id": "ab" * 32, "buyer": "12D3KooW" + "x" * 44, "state": "running", "seconds": 1.5,
           "amount_micros": 10, "countersigned_micros": 10}
    return {"peer_id": "12D3KooWpeer", "addrs": ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWpeer"], "offer": None,
            "earned_micros": 0, "jobs": [job] * 3000, "last_errors": []}


async def test_status_into_a_reader_that_stops_early_is_quiet(tmp_path):
    home = tmp_path / "data"
    home.mkdir(mode=0o700)
    script = (f"{sys.executable} -m node.cli status --data-dir {home} 2>{tmp_path / 'err'} | head -1; "
              "echo \"status exit ${PIPESTATUS[0]}\"")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, home / SOCKET_NAME, _status)
        with trio.fail_after(60):
            done = await trio.run_process(["bash", "-c", script], capture_stdout=True, check=False)
        nursery.cancel_scope.cancel()
    assert done.stdout.decode().splitlines() == ["peer id    12D3KooWpeer", "status exit 0"]
    assert (tmp_path / "err").read_text() == ""


def test_any_command_into_a_reader_that_stops_early_is_quiet(tmp_path):
    """The same for every command: node.cli.main catches the broken pipe (here a command that prints
    far more than a pipe holds, into `head -1`)."""
    import subprocess

    program = ("import sys, node.cli as cli\n"
               "def noisy(args):\n"
               "    for _ in range(20000):\n"
               "        print('line of output ' * 4)\n"
               "    return 0\n"
               "cli._resolve = lambda run: noisy\n"
               "sys.exit(cli.main(['keys', 'show']))\n")
    script = f"{sys.executable} -c \"$PROGRAM\" 2>{tmp_path / 'err'} | head -1; echo \"exit ${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PROGRAM": program, "PATH": "/usr/bin:/bin"})
    assert done.stdout.splitlines()[-1] == "exit 0", done.stdout
    assert (tmp_path / "err").read_text() == ""
