"""The resident agent's pure parts: what a request on its socket may hold (node.agent Rule 2), how a
run's output is queued for its client, and when ``suanli run`` hands a job to an agent at all."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest
import trio
import trio.testing

from node.agent import MAX_BACKLOG_BYTES, AgentConsole, RequestError, parse_run_request
from node.agent_client import FIELDS, run_request
from node.cli import build_parser
from node.commands.run import agent_socket


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--image", "sha256:" + "a" * 64, *argv, "--", "echo", "hi"])


def _line(args: argparse.Namespace, command: list[str] | None = None) -> bytes:
    return json.dumps(run_request(args, command or ["echo", "hi"])).encode()


def test_a_parsed_command_line_round_trips_through_a_request():
    args = _args("--cpus", "0.5", "--memory", "64m", "--env", "A=1", "--gpus", "1", "--json")
    parsed, command = parse_run_request(_line(args))
    assert command == ["echo", "hi"]
    assert {name: getattr(parsed, name) for name in FIELDS} == {name: getattr(args, name) for name in FIELDS}


def test_paths_are_made_absolute_by_the_client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    request = run_request(_args("--input", "in", "--output", "../out", "--image-archive", "img.tar"), ["true"])
    assert request["args"]["input"] == str(tmp_path / "in")
    assert request["args"]["output"] == str(tmp_path.parent / "out")
    assert request["args"]["image_archive"] == str(tmp_path / "img.tar")
    assert "key" not in request["args"] and "bootstrap" not in request["args"]  # the agent's own


@pytest.mark.parametrize("change, says", [
    ({"gpus": True}, "args.gpus"),               # bool is an int in Python, not here
    ({"cpus": "1"}, "args.cpus"),
    ({"env": ["A=1", 2]}, "args.env"),
    ({"input": "relative/dir"}, "args.input: expected an absolute path"),
    ({"wait": 10_000}, "args.wait"),
    ({"candidates": 0}, "args.candidates"),
    ({"extra": 1}, "unknown ['extra']"),
])
def test_a_wrong_field_is_refused_by_name(change, says):
    request = run_request(_args(), ["true"])
    request["args"].update(change)
    with pytest.raises(RequestError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_run_request(json.dumps(request).encode())


@pytest.mark.parametrize("line, says", [
    (b"{", "one JSON object"),
    (b"[]", '"op": "run"'),
    (b'{"op": "cancel"}', '"op": "run"'),
    (b'{"op": "run", "args": [], "command": ["x"]}', "args: expected an object"),
])
def test_a_malformed_request_is_refused(line, says):
    with pytest.raises(RequestError, match=says):
        parse_run_request(line)


@pytest.mark.parametrize("command", [[], "echo hi", ["echo", 1]])
def test_the_command_must_be_a_non_empty_list_of_strings(command):
    request = run_request(_args(), ["true"])
    request["command"] = command
    with pytest.raises(RequestError, match="command"):
        parse_run_request(json.dumps(request).encode())


class _Sink(trio.abc.SendStream):
    def __init__(self, broken: bool = False) -> None:
        self.data = b""
        self.broken = broken

    async def send_all(self, data) -> None:  # noqa: ANN001
        if self.broken:
            raise trio.BrokenResourceError("gone")
        self.data += bytes(data)
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_the_console_sends_events_in_order_and_ends_with_the_exit_code():
    console, sink = AgentConsole(quiet=False), _Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(console.pump, sink)
        console.say("a note")
        await trio.testing.wait_all_tasks_blocked()
        console.log("stdout", b"\xff binary \x00 line")
        console.result({"ok": True})
        console.finish(3)
    events = [json.loads(line) for line in sink.data.splitlines()]
    assert [e["ev"] for e in events] == ["say", "log", "result", "exit"]
    assert base64.b64decode(events[1]["b64"]) == b"\xff binary \x00 line" and events[1]["stream"] == "stdout"
    assert events[-1]["code"] == 3
    console.say("after the end")  # ignored: nothing follows the exit event
    assert not console._out


async def test_quiet_console_keeps_only_the_result_and_the_exit():
    console, sink = AgentConsole(quiet=True), _Sink()
    console.say("note")
    console.log("stderr", b"line")
    console.result({"ok": False})
    console.finish(4)
    await console.pump(sink)
    assert [json.loads(line)["ev"] for line in sink.data.splitlines()] == ["result", "exit"]


async def test_a_client_that_does_not_read_loses_job_lines_not_notes():
    console, sink = AgentConsole(quiet=False), _Sink()
    line = b"x" * (1 << 16)
    for _ in range(MAX_BACKLOG_BYTES // len(line) + 10):  # more than the backlog, nobody pumping
        console.log("stdout", line)
    console.say("still here")
    console.finish(0)
    assert console.dropped_lines > 0
    await console.pump(sink)
    events = [json.loads(x) for x in sink.data.splitlines()]
    assert events[-1] == {"ev": "exit", "code": 0}
    assert any(e["ev"] == "say" and e["text"] == "still here" for e in events)
    assert any(e["ev"] == "say" and "were dropped" in e["text"] for e in events)


async def test_a_gone_client_ends_the_pump_quietly():
    console = AgentConsole(quiet=False)
    console.say("x")
    await console.pump(_Sink(broken=True))
    console.say("more")  # nothing is queued for a client that is gone
    assert not console._out


def test_agent_socket_choice(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert agent_socket(_args("--data-dir", str(home))) is None  # no agent.sock: standalone
    (home / "agent.sock").touch()
    assert agent_socket(_args("--data-dir", str(home))) == home / "agent.sock"
    assert agent_socket(_args("--data-dir", str(home), "--no-agent")) is None
    assert agent_socket(_args("--data-dir", str(home), "--key", str(tmp_path / "k"))) is None  # not the agent's key
    assert agent_socket(_args("--agent", "/x/agent.sock", "--no-agent")) == Path("/x/agent.sock")
