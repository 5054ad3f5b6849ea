"""Errors say whose fault it was (issue 14 item 4): every class of the tree has its ``fault``, the
store's and the sandbox's errors live with their owners and are still importable from p2p.errors, and
p2p.framing maps libp2p's exceptions once: a broken or reset stream is the environment's, malformed
bytes are the peer's, a write after our own close is ours."""

from __future__ import annotations

import pytest
import trio
from libp2p.network.stream.exceptions import StreamClosed, StreamReset

import p2p.errors as errors
import sandbox.errors
import settlement.errors
from p2p.errors import ENVIRONMENT, LOCAL, PEER, fault_of
from p2p.framing import FramedStream, encode_varint


@pytest.mark.parametrize("cls, fault", [
    (errors.SuanliError, LOCAL), (errors.LocalProtocolError, LOCAL), (errors.RemoteProtocolError, PEER),
    (errors.CodecError, PEER), (errors.SignatureError, PEER), (errors.StreamBrokenError, ENVIRONMENT),
    (errors.PeerUnreachableError, ENVIRONMENT), (errors.ConfigError, ENVIRONMENT),
    (errors.KeyFileError, ENVIRONMENT), (errors.UnusableInputError, ENVIRONMENT),
    (settlement.errors.StoreError, ENVIRONMENT), (sandbox.errors.SandboxError, ENVIRONMENT),
    (sandbox.errors.ImageError, PEER), (sandbox.errors.GpuUnavailableError, ENVIRONMENT),
])
def test_every_class_says_whose_fault(cls, fault):
    assert cls("x").fault == fault == fault_of(cls("x"))


def test_one_error_may_say_otherwise_than_its_class_and_foreign_ones_are_our_bug():
    assert fault_of(sandbox.errors.ImageError("busybox missing", fault=ENVIRONMENT)) == ENVIRONMENT
    assert fault_of(KeyError("x")) == LOCAL  # no boundary translated it


def test_moved_classes_are_the_same_classes_under_their_old_names():
    from p2p.errors import GpuUnavailableError, ImageError, SandboxError, StoreError

    assert (SandboxError, ImageError, GpuUnavailableError) == (
        sandbox.errors.SandboxError, sandbox.errors.ImageError, sandbox.errors.GpuUnavailableError)
    assert StoreError is settlement.errors.StoreError
    assert issubclass(StoreError, errors.SuanliError) and issubclass(ImageError, SandboxError)
    with pytest.raises(AttributeError):
        errors.NoSuchError  # noqa: B018


class Broken:
    """A stream whose every call raises ``exc``."""

    def __init__(self, exc):
        self.exc = exc

    async def read(self, n):
        await trio.lowlevel.checkpoint()
        raise self.exc

    async def write(self, data):
        raise self.exc

    async def close_write(self):
        raise self.exc


@pytest.mark.parametrize("exc", [StreamReset("reset"), OSError("connection reset by peer")])
async def test_a_stream_that_breaks_is_the_environments_fault_and_still_a_remote_protocol_error(exc):
    framed = FramedStream(Broken(exc), max_frame_bytes=1000)
    for call in (framed.receive_frame, lambda: framed.send_frame(b"x"), framed.close_write):
        with pytest.raises(errors.StreamBrokenError) as raised:
            await call()
        assert raised.value.fault == ENVIRONMENT and isinstance(raised.value, errors.RemoteProtocolError)
        assert isinstance(raised.value.__cause__, type(exc))


async def test_malformed_bytes_are_the_peers_fault_and_a_write_after_our_close_ours():
    class Scripted:
        async def read(self, n):
            await trio.lowlevel.checkpoint()
            return encode_varint(1001)

    with pytest.raises(errors.RemoteProtocolError) as raised:
        await FramedStream(Scripted(), max_frame_bytes=1000).receive_frame()
    assert raised.value.fault == PEER
    with pytest.raises(errors.LocalProtocolError) as raised:
        await FramedStream(Broken(StreamClosed("closed")), max_frame_bytes=1000).send_frame(b"x")
    assert raised.value.fault == LOCAL
