"""Bulk-transfer goodput of our transport against kernel TCP (BBR, CUBIC) and aioquic, in the lab.

Every cell is a fresh transfer through the lab's link emulator between two namespaces (client
sends, server receives): a 20 Mbit/s bottleneck with a drop-tail queue, a fixed RTT and random
loss in both directions. Goodput counts bytes the receiving application got during the first
``--seconds`` after its first byte. Rows:

- 50 ms RTT, one-BDP queue, 0 / 1 / 3 % loss; 200 ms RTT, one-BDP queue, 5 % loss;
- competing: the peer's flow and one CUBIC (then one BBR) flow on the 50 ms, one-BDP link, no
  random loss: both connect first, then start sending together; the two goodputs;
- queueing delay: 50 ms RTT with a 4-BDP queue: RTT p50 of 10 probes/s, idle and under load;
- loopback (no emulator, ``lo`` of one namespace): CPU-bound goodput;
- the RSS of a process holding 1,000 idle sessions of our transport (loopback).

Run as root: ``python -m bench.transport [--seconds 30] [--rows loss,compete,queue,loopback]``.
The "bitchat" column is our transport (``node.transport.endpoint``); it reads "n/a" until that
module exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab, LinkSpec, Namespace
from lab.netns import set_socket_congestion

STARTED = time.monotonic()
RATE_MBIT = 20.0
PORT = 9100
ECHO_PORT = 9199
CHUNK = 256 * 1024
BENCH_PROTOCOL = "bench/1"
PEERS = ("bitchat", "bbr", "cubic", "aioquic")
TITLES = {"bitchat": "bitchat", "bbr": "TCP BBR", "cubic": "TCP CUBIC",
          "aioquic": "aioquic (reno)"}  # fmt: skip


class NotBuilt(Exception):
    """The transport under test does not exist in this tree yet."""


# -- receiving side: counts bytes in a fixed window after the first byte ----------------------


class Meter:
    """Bytes received during ``window`` seconds from the first byte."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.first: float | None = None
        self.in_window = 0
        self.total = 0

    def add(self, n: int) -> bool:
        """Count ``n`` bytes; True once the window is over."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.total += n
        if now - self.first <= self.window:
            self.in_window += n
            return False
        return True

    def result(self) -> dict[str, Any]:
        return {"bytes": self.in_window, "window": self.window, "total": self.total}


def tcp_sink(bind: str, window: float) -> dict[str, Any]:
    host, port = _split(bind)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1)
    _ready()
    conn, _ = listener.accept()
    meter = Meter(window)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    while (n := conn.recv_into(view)) and not meter.add(n):
        pass
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    conn.close()
    return {**meter.result(), "peer_cc": info.rstrip(b"\0").decode()}


def tcp_source(connect: str, congestion: str, limit: float) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    set_socket_congestion(sock, congestion)
    sock.connect(_split(connect))
    _ready()
    data = memoryview(bytes(1 << 20))
    deadline = time.monotonic() + limit
    sent = 0
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            sock.sendall(data)
            sent += len(data)
    sock.close()
    return {"sent": sent}


def quic_sink(bind: str, window: float, cert: str, key: str) -> dict[str, Any]:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    meter = Meter(window)
    done = asyncio.Event()

    class Sink(QuicConnectionProtocol):
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, StreamDataReceived) and meter.add(len(event.data)):
                if not done.is_set():
                    self._quic.close()
                    self.transmit()
                done.set()

    async def run() -> None:
        config = QuicConfiguration(
            is_client=False, alpn_protocols=["bench"], congestion_control_algorithm="reno",
            max_data=64 << 20, max_stream_data=64 << 20,
        )  # fmt: skip
        config.load_cert_chain(cert, key)
        host, port = _split(bind)
        server = await serve(host, port, configuration=config, create_protocol=Sink)
        _ready()
        await done.wait()
        await asyncio.sleep(0.2)  # let the CLOSE reach the client
        server.close()

    asyncio.run(run())
    return meter.result()


def quic_source(connect: str, limit: float) -> dict[str, Any]:
    from aioquic.asyncio.client import connect as quic_connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated

    chunk = bytes(64 * 1024)
    backlog = 2 << 20  # unacknowledged bytes kept queued in the stream

    class Source(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.stream_id: int | None = None
            self.sent = 0
            self.over = asyncio.Event()

        def fill(self) -> None:
            if self.stream_id is None:
                self.stream_id = self._quic.get_next_available_stream_id()
                self._quic.send_stream_data(self.stream_id, b"")
            stream = self._quic._streams[self.stream_id]
            while len(stream.sender._buffer) < backlog:
                self._quic.send_stream_data(self.stream_id, chunk)
                self.sent += len(chunk)
            self.transmit()

        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            super().datagram_received(data, addr)
            if not self.over.is_set() and self.stream_id is not None:
                self.fill()

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ConnectionTerminated):
                self.over.set()

    async def run() -> int:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["bench"], congestion_control_algorithm="reno",
            verify_mode=ssl.CERT_NONE,
        )  # fmt: skip
        host, port = _split(connect)
        async with quic_connect(
            host, port, configuration=config, create_protocol=Source, wait_connected=True
        ) as proto:
            assert isinstance(proto, Source)
            _ready()
            proto.fill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proto.over.wait(), limit)
            return proto.sent

    return {"sent": asyncio.run(run())}


# -- our transport: the hook the transport fills in -----------------------------------------


def bitchat_available() -> bool:
    return importlib.util.find_spec("node.transport.endpoint") is not None


async def open_bitchat_endpoint(bind: tuple[str, int]) -> Any:
    """Our transport's Endpoint on ``bind`` with a fresh identity."""
    try:
        from node.identity import Identity
        from node.transport.endpoint import open_endpoint
    except ImportError as exc:
        raise NotBuilt(f"node.transport.endpoint.open_endpoint: {exc}") from None
    return await open_endpoint(Identity.generate(), *bind)


def bitchat_bulk_server(bind: str, window: float) -> dict[str, Any]:
    """Accept one stream of protocol ``bench/1`` and count its bytes."""
    meter = Meter(window)

    async def run() -> None:
        endpoint = await open_bitchat_endpoint(_split(bind))
        done = asyncio.Event()

        async def handler(connection: Any, stream: Any) -> None:
            while (data := await stream.read(CHUNK)) and not meter.add(len(data)):
                pass
            done.set()
            await connection.close()

        endpoint.set_handler(BENCH_PROTOCOL, handler)
        _ready()
        await done.wait()
        await endpoint.close()

    asyncio.run(run())
    return meter.result()


def bitchat_bulk_client(connect: str, limit: float) -> dict[str, Any]:
    """Send on one ``bench/1`` stream until the server closes (or ``limit`` seconds)."""

    async def run() -> int:
        endpoint = await open_bitchat_endpoint(("0.0.0.0", 0))
        connection = await endpoint.connect(_split(connect))
        stream = await connection.open_stream(BENCH_PROTOCOL)
        _ready()
        chunk = bytes(CHUNK)
        sent = 0
        deadline = time.monotonic() + limit
        trace = os.environ.get("BENCH_TRANSPORT_TRACE")
        tracer = asyncio.create_task(_trace(connection, trace)) if trace else None
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline:
                stream.write(chunk)
                await stream.drain()
                sent += len(chunk)
        if tracer is not None:
            tracer.cancel()
        with contextlib.suppress(Exception):
            await endpoint.close()
        return sent

    return {"sent": asyncio.run(run())}


async def _trace(connection: Any, path: str) -> None:
    """With BENCH_TRANSPORT_TRACE=file: the sender's session status, one JSON line per 0.5 s."""
    with open(f"{path}.{os.getpid()}", "w") as out:
        while True:
            await asyncio.sleep(0.5)
            out.write(
                json.dumps({"t": round(time.monotonic() - STARTED, 2), **connection.status()})
                + "\n"
            )
            out.flush()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bitchat_idle_server(bind: str, count: int) -> dict[str, Any]:
    """An endpoint that waits for ``count`` sessions, then reports its process's RSS."""

    async def run() -> dict[str, Any]:
        before = _rss_mb()
        endpoint = await open_bitchat_endpoint(_split(bind))
        empty = _rss_mb()
        _ready()
        deadline = time.monotonic() + 180
        while len(list(endpoint.connections)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # idle: only keepalives from here on
        result = {
            "sessions": len(list(endpoint.connections)),
            "rss_mb": _rss_mb(),
            "rss_endpoint_mb": empty,
            "rss_interpreter_mb": before,
        }
        await endpoint.close()
        return result

    return asyncio.run(run())


def bitchat_idle_clients(connect: str, count: int) -> dict[str, Any]:
    """``count`` sessions to ``connect``, each from its own identity, 50 per loopback address
    (127.0.0.2, .3, ...) to stay within per-address and per-identity session limits."""

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))

    async def run() -> None:
        gate = asyncio.Semaphore(32)
        endpoints: list[Any] = []
        failures = 0

        async def one(i: int) -> None:
            nonlocal failures
            async with gate:
                endpoint = await open_bitchat_endpoint((f"127.0.0.{2 + i // 50}", 0))
                endpoints.append(endpoint)
                try:
                    await endpoint.connect(_split(connect))
                except Exception:
                    failures += 1

        await asyncio.gather(*(one(i) for i in range(count)))
        print(json.dumps({"connected": count - failures}), flush=True)
        await asyncio.sleep(3600)  # hold the sessions open (idle) until stopped

    asyncio.run(run())
    return {}


def udp_echo(bind: str) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(_split(bind))
    _ready()
    while True:
        data, addr = sock.recvfrom(2048)
        sock.sendto(data, addr)


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "tcp-sink": lambda a: tcp_sink(a.bind, a.window),
    "tcp-source": lambda a: tcp_source(a.connect, a.cc, a.limit),
    "quic-sink": lambda a: quic_sink(a.bind, a.window, a.cert, a.key),
    "quic-source": lambda a: quic_source(a.connect, a.limit),
    "bitchat-sink": lambda a: bitchat_bulk_server(a.bind, a.window),
    "bitchat-source": lambda a: bitchat_bulk_client(a.connect, a.limit),
    "udp-echo": lambda a: udp_echo(a.bind),
    "bitchat-idle-server": lambda a: bitchat_idle_server(a.bind, a.count),
    "bitchat-idle-clients": lambda a: bitchat_idle_clients(a.connect, a.count),
}


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


_GO_GATE = False


def _ready() -> None:
    """Say so; a sender then waits for ``go`` on stdin so that competing flows start together."""
    print("ready", flush=True)
    if _GO_GATE:
        sys.stdin.readline()


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport worker")
    parser.add_argument("kind", choices=sorted(WORKERS))
    parser.add_argument("--bind", default="")
    parser.add_argument("--connect", default="")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--limit", type=float, default=60.0)
    parser.add_argument("--cc", default="bbr")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--go", action="store_true", help="after 'ready', wait for a line")
    args = parser.parse_args(argv)
    global _GO_GATE
    _GO_GATE = args.go
    try:
        result = WORKERS[args.kind](args)
    except NotBuilt as exc:
        print(json.dumps({"error": f"n/a (transport not built: {exc})"}), flush=True)
        return 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["wall_seconds"] = time.monotonic() - STARTED
    print(json.dumps(result), flush=True)
    return 0


# -- orchestration -----------------------------------------------------------------------


@dataclass
class Flow:
    peer: str
    sink: subprocess.Popen[str]
    source: subprocess.Popen[str]


@dataclass
class Topology:
    lab: Lab
    client: Namespace
    server: Namespace
    server_addr: str
    cert: Path
    key: Path
    ports: Iterator[int] = field(default_factory=lambda: iter(range(PORT, PORT + 1000)))


def _await_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""


def start_flow(top: Topology, peer: str, seconds: float) -> Flow:
    port = next(top.ports)
    bind = f"{top.server_addr}:{port}"
    kinds = {"bbr": "tcp", "cubic": "tcp", "reno": "tcp", "aioquic": "quic", "bitchat": "bitchat"}
    kind = kinds[peer]
    sink_args = ["worker", f"{kind}-sink", "--bind", bind, "--window", str(seconds)]
    if kind == "quic":
        sink_args += ["--cert", str(top.cert), "--key", str(top.key)]
    sink = top.server.python(*sink_args, module="bench.transport", stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    line = _await_line(sink, 20)
    if line != "ready":
        raise RuntimeError(line or f"{peer} receiver did not start")
    src_args = ["worker", f"{kind}-source", "--connect", bind, "--limit", str(seconds + 30),
                "--go"]  # fmt: skip
    if kind == "tcp":
        src_args += ["--cc", peer]
    source = top.client.python(*src_args, module="bench.transport", stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = _await_line(source, 30)
    if line != "ready":
        sink.kill()
        raise RuntimeError(line or f"{peer} sender did not connect")
    return Flow(peer, sink, source)


def go(*flows: Flow) -> None:
    """Let connected senders start sending, together."""
    for flow in flows:
        assert flow.source.stdin is not None
        flow.source.stdin.write("go\n")
        flow.source.stdin.flush()


def finish_flow(flow: Flow, seconds: float, *, record_cpu: bool = True) -> float | str:
    """Goodput in Mbit/s, or the reason there is none."""
    line = _await_line(flow.sink, seconds + 60)
    source_line = _await_line(flow.source, 15)
    if source_line == "ready":  # the sender's start line, not yet read
        source_line = _await_line(flow.source, 15)
    shares = []
    for text in (line, source_line):
        with contextlib.suppress(json.JSONDecodeError, KeyError, ZeroDivisionError):
            usage = json.loads(text)
            shares.append(f"{usage['cpu_seconds'] / usage['wall_seconds']:.0%}")
    if len(shares) == 2 and record_cpu:
        WORKER_CPU.setdefault(flow.peer, []).append("/".join(shares))
    for proc in (flow.source, flow.sink):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        return "failed"
    if "error" in result:
        return str(result["error"])
    return float(result["bytes"]) * 8 / float(result["window"]) / 1e6


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for the aioquic server, made now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.lab")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.lab")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    return cert_path, key_path


@contextlib.contextmanager
def topology(spec: LinkSpec | None) -> Iterator[Topology]:
    """Client and server namespaces joined by an emulated link (or one namespace, ``lo``)."""
    with Lab() as lab:
        cert, key = make_cert(lab.tmpdir)
        if spec is None:
            ns = lab.namespace("loop")
            yield Topology(lab, ns, ns, "127.0.0.1", cert, key)
        else:
            client, server = lab.namespace("client"), lab.namespace("server")
            link = lab.link(client, server, emulate=spec)
            started = time.monotonic()
            yield Topology(lab, client, server, link.addr_b, cert, key)
            stats = link.stats()
            EMULATOR_HEALTH.append(
                f"{spec.delay_ms * 2:g} ms/{spec.loss:.0%}/{spec.queue_bytes // 1000} kB queue: "
                f"{stats['cpu_seconds'] / (time.monotonic() - started):.0%} of a core, "
                f"timer late mean {stats['timer_late_ms_mean']:.2f} ms, "
                f"max {stats['timer_late_ms_max']:.1f} ms"
            )


EMULATOR_HEALTH: list[str] = []
WORKER_CPU: dict[str, list[str]] = {}


def goodput(spec: LinkSpec | None, peers: list[str], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with topology(spec) as top:
        for peer in peers:
            if peer == "bitchat" and not bitchat_available():
                out[peer] = "n/a (transport not built)"
                continue
            flow = start_flow(top, peer, seconds)
            go(flow)
            out[peer] = finish_flow(flow, seconds)
            time.sleep(1)  # let the queue drain between peers
    return out


def compete(spec: LinkSpec, peers: list[str], rival: str, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with topology(spec) as top:
        for peer in peers:
            if peer == "bitchat" and not bitchat_available():
                out[peer] = "n/a (transport not built)"
                continue
            other = start_flow(top, rival, seconds)
            mine = start_flow(top, peer, seconds)
            go(mine, other)
            a, b = finish_flow(mine, seconds), finish_flow(other, seconds, record_cpu=False)
            out[peer] = (a, b)
            time.sleep(1)
    return out


class Pinger:
    """UDP RTT probes (10 per second) from the client to an echo in the server namespace."""

    def __init__(self, top: Topology) -> None:
        echo = top.server.python("worker", "udp-echo", "--bind", f"{top.server_addr}:{ECHO_PORT}",
                                 module="bench.transport", stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip
        if _await_line(echo, 20) != "ready":
            raise RuntimeError("udp echo did not start")
        self.sock = top.client.socket()
        self.sock.connect((top.server_addr, ECHO_PORT))
        self.sock.settimeout(2.0)

    def sample(self, seconds: float) -> list[float]:
        rtts = []
        end = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < end:
            seq += 1
            sent = time.monotonic()
            self.sock.send(seq.to_bytes(8, "big"))
            with contextlib.suppress(TimeoutError):
                while True:
                    data = self.sock.recv(64)
                    if int.from_bytes(data, "big") == seq:
                        rtts.append((time.monotonic() - sent) * 1000)
                        break
            time.sleep(max(0.0, 0.1 - (time.monotonic() - sent)))
        return rtts


def queueing(spec: LinkSpec, peers: list[str], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with topology(spec) as top:
        pinger = Pinger(top)
        for peer in peers:
            if peer == "bitchat" and not bitchat_available():
                out[peer] = "n/a (transport not built)"
                continue
            idle = statistics.median(pinger.sample(3))
            flow = start_flow(top, peer, seconds)
            go(flow)
            loaded_samples: list[float] = []
            sampler = threading.Thread(
                target=lambda out=loaded_samples: out.extend(pinger.sample(seconds - 1))
            )
            time.sleep(1)  # let the flow ramp up before sampling
            sampler.start()
            rate = finish_flow(flow, seconds)
            sampler.join()
            loaded = statistics.median(loaded_samples) if loaded_samples else float("nan")
            out[peer] = (idle, loaded, rate)
            time.sleep(2)
    return out


def idle_sessions(peers: list[str], count: int) -> dict[str, Any]:
    """RSS of a process holding ``count`` idle sessions (our transport only)."""
    out: dict[str, Any] = {p: "n/a" for p in peers if p != "bitchat"}
    if "bitchat" not in peers:
        return out
    if not bitchat_available():
        out["bitchat"] = "n/a (transport not built)"
        return out
    with topology(None) as top:
        bind = f"127.0.0.1:{next(top.ports)}"
        server = top.server.python("worker", "bitchat-idle-server", "--bind", bind, "--count",
                                   str(count), module="bench.transport", stdout=subprocess.PIPE,
                                   text=True)  # fmt: skip
        if _await_line(server, 30) != "ready":
            out["bitchat"] = "failed to start"
            return out
        clients = top.client.python("worker", "bitchat-idle-clients", "--connect", bind,
                                    "--count", str(count), module="bench.transport",
                                    stdout=subprocess.PIPE, text=True)  # fmt: skip
        line = _await_line(server, 240)
        clients.kill()
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            out["bitchat"] = "failed"
            return out
        if "error" in result:
            out["bitchat"] = result["error"]
        else:
            out["bitchat"] = (
                f"{result['rss_mb']:.1f} MB with {result['sessions']} sessions "
                f"(endpoint alone {result['rss_endpoint_mb']:.1f} MB)"
            )
    return out


# -- the table ---------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, tuple) and len(value) == 2:
        return " / ".join(_fmt(v) for v in value)
    if isinstance(value, tuple) and len(value) == 3:
        idle, loaded, rate = value
        return f"{idle:.1f} → {loaded:.1f} ms ({loaded - idle:+.1f}) at {_fmt(rate)}"
    return str(value)


def print_table(rows: list[tuple[str, dict[str, Any]]], peers: list[str]) -> None:
    header = ["condition", *(TITLES[p] for p in peers)]
    lines = [header, ["---"] * len(header)]
    lines += [[name, *(_fmt(values.get(p, "")) for p in peers)] for name, values in rows]
    for line in lines:
        print("| " + " | ".join(line) + " |")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench.transport",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="per transfer (30)")
    parser.add_argument("--loopback-seconds", type=float, default=10.0,
                        help="per loopback transfer (10; CPU-bound, so kept short)")  # fmt: skip
    parser.add_argument("--rows", default="loss,compete,queue,loopback,sessions",
                        help="comma list of: loss, compete, queue, loopback, sessions")  # fmt: skip
    parser.add_argument("--sessions", type=int, default=1000, help="idle sessions (1000)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ",".join(PEERS))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.transport needs root (network namespaces)", file=sys.stderr)
        return 2
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    wanted = set(args.rows.split(","))
    t = args.seconds
    rows: list[tuple[str, dict[str, Any]]] = []

    def show(name: str, values: dict[str, Any]) -> None:
        rows.append((name, values))
        print(f"  {name}: " + ", ".join(f"{TITLES[p]} {_fmt(v)}" for p, v in values.items()),
              file=sys.stderr, flush=True)  # fmt: skip

    started = time.monotonic()
    start_load = os.getloadavg()[0]
    if "loss" in wanted:
        for rtt, loss in ((50, 0.0), (50, 0.01), (50, 0.03), (200, 0.05)):
            spec = LinkSpec.bdp_queue(RATE_MBIT, rtt, loss=loss)
            show(f"{rtt} ms, {loss:.0%} loss, goodput Mbit/s", goodput(spec, peers, t))
    if "compete" in wanted:
        spec = LinkSpec.bdp_queue(RATE_MBIT, 50)
        for rival in ("cubic", "bbr"):
            show(f"vs one {TITLES[rival]} flow: this / {TITLES[rival]}, Mbit/s",
                 compete(spec, peers, rival, t))  # fmt: skip
    if "queue" in wanted:
        spec = LinkSpec.bdp_queue(RATE_MBIT, 50, bdps=4)
        show("4xBDP queue: RTT p50 idle → loaded", queueing(spec, peers, t))
    if "loopback" in wanted:
        show("loopback goodput Mbit/s (CPU-bound)", goodput(None, peers, args.loopback_seconds))
    if "sessions" in wanted:
        show(f"{args.sessions:,} idle sessions: process RSS", idle_sessions(peers, args.sessions))
    print()
    print(f"bench.transport: {RATE_MBIT:g} Mbit/s bottleneck, queue of one BDP unless noted, loss "
          f"in both directions; {t:g} s per transfer, one run per cell; "
          f"total {time.monotonic() - started:.0f} s")  # fmt: skip
    print_table(rows, peers)
    if EMULATOR_HEALTH:
        print("\nlink emulator (whole run of each condition): " + "; ".join(EMULATOR_HEALTH))
    if WORKER_CPU:
        print(
            "CPU of receiver/sender processes (share of one core over their lifetime), per "
            "cell in row order: "
            + "; ".join(f"{TITLES[p]} {', '.join(v)}" for p, v in WORKER_CPU.items())
        )
    end_load = os.getloadavg()[0]
    print(f"load average (1 min) at start {start_load:.1f}, at end {end_load:.1f}, "
          f"on {os.cpu_count()} CPUs: userspace peers (aioquic, bitchat) slow down when the "
          "machine is busy, kernel TCP much less")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
