"""A go-libp2p node for tests: the ``p2pd`` daemon as a subprocess owned by a trio context manager,
and a client for its control socket.

``open_p2pd(...)`` starts ``.cache/p2pd/p2pd`` (``scripts/fetch_p2pd.sh``) with its control socket on a
unix path, waits until IDENTIFY answers, and on exit kills it (always: cancellation, failure or not).
``P2pdClient`` speaks the control protocol (``p2pd_pb``): one unix connection per request; a stream,
a streaming DHT answer or a subscription keeps its connection until read or closed.

Rule 1: the daemon listens on 127.0.0.1 only, and never dials a public bootstrapper: ``-b`` is passed
only together with ``-bootstrapPeers`` naming local peers.
Rule 2: every wait is bounded: ``ready_timeout_s`` for the start, the caller's ``trio.fail_after`` for
requests (STYLE 2), and DHT requests also carry a ``timeout`` the daemon enforces itself.
Rule 3: a control connection that ends before its answer raises ``ControlBroken`` (the daemon died or
dropped us): that is the go node's failure, distinct from an ERROR answer (``DaemonError``).
Rule 4: no daemon outlives its test: it is killed when ``open_p2pd`` exits, and the kernel kills it
if the test process itself dies first (``setpriv --pdeathsig KILL``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import multiaddr
import p2pd_pb as pb
import trio

from p2p.identity import NodeKey, b58decode, b58encode

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DHT_TIMEOUT_S = 20


def daemon_path() -> Path:
    """Where the daemon is expected: ``SUANLI_P2PD`` if set, else fetch_p2pd.sh's cache folder
    (``SUANLI_P2PD_DIR``, default ``.cache/p2pd``)."""
    if "SUANLI_P2PD" in os.environ:
        return Path(os.environ["SUANLI_P2PD"])
    return Path(os.environ.get("SUANLI_P2PD_DIR", REPO / ".cache" / "p2pd")) / "p2pd"


class DaemonError(Exception):
    """The daemon answered ERROR (its message is the go error text)."""


class ControlBroken(Exception):
    """The control connection ended before the daemon's answer: the go node died or hung up."""


def peer_bytes(peer_id: str) -> bytes:
    return b58decode(peer_id)


def peer_text(raw: bytes) -> str:
    return b58encode(raw)


def addr_text(raw: bytes) -> str:
    return str(multiaddr.Multiaddr(raw))


def addr_bytes(text: str) -> bytes:
    return bytes(multiaddr.Multiaddr(text).to_bytes())


class _Reader:
    """Varint-delimited messages from a byte stream; what follows the last one stays in ``buf``."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def message(self) -> bytes | None:
        """The next message, or None at a clean end of stream."""
        while True:
            got = pb.decode_uvarint(self.buf, 0)
            if got is not None:
                length, start = got
                if length > pb.MAX_MESSAGE_BYTES:
                    raise pb.WireError(f"message of {length} bytes from the daemon")
                if len(self.buf) >= start + length:
                    data = bytes(self.buf[start:start + length])
                    del self.buf[:start + length]
                    return data
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self.buf:
                    raise ControlBroken("the daemon closed the control connection inside a message")
                return None
            self.buf += chunk

    async def response(self) -> pb.Response:
        data = await self.message()
        if data is None:
            raise ControlBroken("the daemon closed the control connection without answering")
        res = pb.Response.decode(data)
        if res.type != pb.OK:
            raise DaemonError(res.error or "ERROR without a message")
        return res


class DaemonStream:
    """A libp2p stream of the go node, piped through a unix connection (after STREAM_OPEN)."""

    def __init__(self, sock: trio.SocketStream, leftover: bytes, info: pb.StreamInfo) -> None:
        self.sock = sock
        self._leftover = bytearray(leftover)
        self.peer = peer_text(info.peer)
        self.protocol = info.proto

    async def send_all(self, data: bytes) -> None:
        await self.sock.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        if self._leftover:
            data = bytes(self._leftover[:max_bytes])
            del self._leftover[:max_bytes]
            return data
        return await self.sock.receive_some(max_bytes)

    async def receive_until_eof(self, limit: int) -> bytes:
        """Everything the remote writes until it closes; ``pb.WireError`` beyond ``limit`` bytes."""
        out = bytearray()
        while chunk := await self.receive_some():
            out += chunk
            if len(out) > limit:
                raise pb.WireError(f"more than {limit} bytes on the stream")
        return bytes(out)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.sock.aclose()


@dataclass(frozen=True)
class Found:
    peer_id: str
    addrs: tuple[str, ...]


def _found(info: pb.PeerInfo) -> Found:
    return Found(peer_text(info.id), tuple(addr_text(a) for a in info.addrs))


class P2pdClient:
    """Requests to one daemon's control socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    @asynccontextmanager
    async def _conn(self, message: bytes) -> AsyncIterator[tuple[trio.SocketStream, _Reader]]:
        try:
            sock = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise ControlBroken(f"cannot reach the control socket: {exc}") from exc
        try:
            await sock.send_all(pb.delimited(message))
            yield sock, _Reader(sock)
        except (trio.BrokenResourceError, OSError) as exc:
            raise ControlBroken(f"control connection broke: {exc!r}") from exc
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await sock.aclose()

    async def _call(self, message: bytes) -> pb.Response:
        async with self._conn(message) as (_, reader):
            return await reader.response()

    async def identify(self) -> Found:
        res = await self._call(pb.identify_request())
        if res.identify is None:
            raise pb.WireError("IDENTIFY answer without identify")
        return _found(res.identify)

    async def connect(self, peer_id: str, addrs: Iterable[str]) -> None:
        await self._call(pb.connect_request(peer_bytes(peer_id), [addr_bytes(a) for a in addrs]))

    async def disconnect(self, peer_id: str) -> None:
        await self._call(pb.disconnect_request(peer_bytes(peer_id)))

    async def list_peers(self) -> list[Found]:
        return [_found(p) for p in (await self._call(pb.list_peers_request())).peers]

    async def open_stream(self, peer_id: str, protocols: Sequence[str]) -> DaemonStream:
        """A new stream; the caller closes it (``aclose``)."""
        try:
            sock = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise ControlBroken(f"cannot reach the control socket: {exc}") from exc
        try:
            await sock.send_all(pb.delimited(pb.stream_open_request(peer_bytes(peer_id), protocols)))
            reader = _Reader(sock)
            res = await reader.response()
            if res.stream_info is None:
                raise pb.WireError("STREAM_OPEN answer without stream info")
            return DaemonStream(sock, bytes(reader.buf), res.stream_info)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await sock.aclose()
            raise

    # -- DHT ----------------------------------------------------------------------------------
    async def _dht_stream(self, message: bytes) -> list[pb.DHTResponse]:
        """BEGIN, the VALUEs, END: the VALUEs."""
        async with self._conn(message) as (_, reader):
            res = await reader.response()
            if res.dht is None or res.dht.type != pb.BEGIN:
                raise pb.WireError("streaming DHT answer without BEGIN")
            values = []
            while True:
                data = await reader.message()
                if data is None:
                    raise ControlBroken("the daemon ended a DHT answer before END")
                item = pb.DHTResponse.decode(data)
                if item.type == pb.END:
                    return values
                values.append(item)

    async def find_peer(self, peer_id: str, timeout_s: int = DEFAULT_DHT_TIMEOUT_S) -> Found:
        res = await self._call(pb.dht_request(pb.FIND_PEER, peer=peer_bytes(peer_id), timeout_s=timeout_s))
        if res.dht is None or res.dht.peer is None:
            raise pb.WireError("FIND_PEER answer without a peer")
        return _found(res.dht.peer)

    async def find_providers(self, cid: bytes, *, count: int = 20,
                             timeout_s: int = DEFAULT_DHT_TIMEOUT_S) -> list[Found]:
        """Providers of ``cid`` (binary CID; a CIDv0 is the sha2-256 multihash itself)."""
        items = await self._dht_stream(pb.dht_request(pb.FIND_PROVIDERS, cid=cid, count=count,
                                                      timeout_s=timeout_s))
        return [_found(i.peer) for i in items if i.peer is not None]

    async def get_closest_peers(self, key: bytes, timeout_s: int = DEFAULT_DHT_TIMEOUT_S) -> list[str]:
        items = await self._dht_stream(pb.dht_request(pb.GET_CLOSEST_PEERS, key=key, timeout_s=timeout_s))
        return [peer_text(i.value) for i in items if i.value is not None]

    async def provide(self, cid: bytes, timeout_s: int = DEFAULT_DHT_TIMEOUT_S) -> None:
        await self._call(pb.dht_request(pb.PROVIDE, cid=cid, timeout_s=timeout_s))

    async def put_value(self, key: bytes, value: bytes, timeout_s: int = DEFAULT_DHT_TIMEOUT_S) -> None:
        await self._call(pb.dht_request(pb.PUT_VALUE, key=key, value=value, timeout_s=timeout_s))

    # -- pubsub -------------------------------------------------------------------------------
    async def publish(self, topic: str, data: bytes) -> None:
        await self._call(pb.pubsub_request(pb.PS_PUBLISH, topic, data))

    async def topic_peers(self, topic: str) -> list[str]:
        res = await self._call(pb.pubsub_request(pb.PS_LIST_PEERS, topic))
        return [peer_text(p) for p in res.ps_peer_ids]

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel[pb.PSMessage]]:
        """Messages of ``topic`` while the block runs (the daemon unsubscribes when it closes)."""
        send, receive = trio.open_memory_channel[pb.PSMessage](1024)
        async with self._conn(pb.pubsub_request(pb.PS_SUBSCRIBE, topic)) as (_, reader):
            await reader.response()

            async def pump() -> None:
                async with send:
                    while (data := await reader.message()) is not None:
                        await send.send(pb.PSMessage.decode(data))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()


@dataclass
class GoNode:
    """A running p2pd: its process, client, identity and log."""

    process: subprocess.Popen[bytes]
    client: P2pdClient
    peer_id: str
    addrs: tuple[str, ...]
    log_path: Path

    @property
    def addr(self) -> str:
        """Its first TCP address with ``/p2p/<id>``, as a bootstrap address."""
        tcp = [a for a in self.addrs if "/tcp/" in a]
        return f"{tcp[0]}/p2p/{self.peer_id}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, limit: int = 6000) -> str:
        return _tail(self.log_path, limit)


def p2pd_args(binary: Path, socket_path: str, *, bootstrap: Sequence[str] = (), key_path: str | None = None,
              dht: str = "server") -> list[str]:
    """Rule 1: loopback only; ``-b`` only with local ``-bootstrapPeers``."""
    args = [str(binary), "-listen", f"/unix{socket_path}", "-hostAddrs", "/ip4/127.0.0.1/tcp/0",
            "-pubsub", "-pubsubRouter", "gossipsub", "-gossipsubHeartbeatInterval", "1s",
            "-gossipsubHeartbeatInitialDelay", "100ms", "-connManager=false", "-natPortMap=false",
            "-autonat=false", "-relay=false", "-autoRelay=false"]
    args.append({"server": "-dhtServer", "client": "-dhtClient"}[dht])
    if key_path is not None:
        args += ["-id", key_path]
    if bootstrap:
        args += ["-b", "-bootstrapPeers", ",".join(bootstrap)]
    return args


def _die_with_us() -> list[str]:
    """A prefix that makes the kernel SIGKILL the daemon if this process dies first (Rule 4)."""
    setpriv = shutil.which("setpriv")  # util-linux, present on every Debian/Ubuntu
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _spawn(args: list[str], workdir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GOLOG_LOG_LEVEL": os.environ.get("GOLOG_LOG_LEVEL", "error")}
    with open(log_path, "wb") as log:
        return subprocess.Popen(_die_with_us() + args, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=workdir)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


@asynccontextmanager
async def open_p2pd(*, key: NodeKey | None = None, bootstrap: Sequence[str] = (), dht: str = "server",
                    ready_timeout_s: float = 30.0) -> AsyncIterator[GoNode]:
    """Start a go node (with ``key``'s identity if given) and kill it on exit, whatever happens."""
    binary = daemon_path()
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{binary} is missing: run scripts/fetch_p2pd.sh")
    workdir = Path(tempfile.mkdtemp(prefix="p2pd-", dir="/tmp"))  # unix socket paths max ~107 bytes
    socket_path = str(workdir / "ctl.sock")
    key_path = None
    if key is not None:
        key_path = str(workdir / "identity.key")
        (workdir / "identity.key").write_bytes(key.to_file_bytes())  # libp2p's marshalled private key
    log_path = workdir / "p2pd.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        # Spawned from this (trio's main) thread on purpose, not with trio.lowlevel.open_process: that
        # one forks from a worker thread, and the parent-death signal (Rule 4) fires when the forking
        # *thread* exits, i.e. when trio's thread cache retires it. A vfork+exec takes about 1 ms.
        process = _spawn(p2pd_args(binary, socket_path, bootstrap=bootstrap, key_path=key_path, dht=dht),
                         workdir, log_path)
        client = P2pdClient(socket_path)
        ident = await _wait_ready(process, client, ready_timeout_s, log_path)
        yield GoNode(process, client, ident.peer_id, ident.addrs, log_path)
    finally:
        if process is not None:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.kill()
                with trio.move_on_after(10):
                    for _ in range(500):  # reaping the child we killed
                        if process.poll() is not None:
                            break
                        await trio.sleep(0.02)
        if os.environ.get("SUANLI_KEEP_P2PD_LOGS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


async def _wait_ready(process: subprocess.Popen[bytes], client: P2pdClient, timeout_s: float,
                      log_path: Path) -> Found:
    with trio.move_on_after(timeout_s):
        for _ in range(int(timeout_s / 0.05) + 1):  # bounded in count as well as time
            if process.poll() is not None:
                raise ControlBroken(f"p2pd exited with {process.returncode} at start:\n{_tail(log_path)}")
            try:
                with trio.fail_after(2):
                    return await client.identify()
            except (ControlBroken, trio.TooSlowError):  # socket not there yet, or not answering yet
                pass
            await trio.sleep(0.05)
    raise ControlBroken(f"p2pd did not answer IDENTIFY within {timeout_s} s:\n{_tail(log_path)}")
