"""Memory of idle sessions: RSS of a process holding 1,000 idle encrypted sessions.

Three servers, each measured with ``psutil`` before and after a client opened N sessions to it
and let them go idle (keepalives only): the real agent (``bitchat-node run``, every service),
a bare process with only our transport's Endpoint, and a bare aioquic server (TLS 1.3 + QUIC,
the Python peer) with the same number of idle connections. Sessions come from many client
identities and loopback addresses (127.0.x.y), as the server limits sessions per IP and per
peer identity.

Run: ``python -m bench.transport_sessions [--sessions 1000]``. Target (issue 3): 1,000 idle
sessions cost at most 25 MB of RSS (the "added" column).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

PER_IP = 60
PER_IDENTITY = 8
CONCURRENCY = 32


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# -- servers (run as child processes) ------------------------------------------------------


def serve_bitchat() -> None:
    from node.identity import Identity
    from node.transport.endpoint import open_endpoint

    async def run() -> None:
        ep = await open_endpoint(Identity.generate(), "127.0.0.1", 0, max_sessions=4096)
        print(json.dumps({"port": ep.local_address[1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def serve_aioquic(cert: str, key: str) -> None:
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration

    async def run() -> None:
        config = QuicConfiguration(is_client=False, alpn_protocols=["bench"], idle_timeout=120)
        config.load_cert_chain(cert, key)
        server = await serve("127.0.0.1", 0, configuration=config)
        port = server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


# -- clients (run in this process) ----------------------------------------------------------


async def open_bitchat_sessions(port: int, n: int) -> list[Any]:
    from node.identity import Identity
    from node.transport.endpoint import open_endpoint

    endpoints = []
    conns: list[Any] = []
    sem = asyncio.Semaphore(CONCURRENCY)
    for i in range((n + PER_IDENTITY - 1) // PER_IDENTITY):
        ip = f"127.0.{1 + i * PER_IDENTITY // PER_IP}.{1 + (i * PER_IDENTITY // PER_IP) % 250}"
        endpoints.append(await open_endpoint(Identity.generate(), ip, 0))

    async def one(ep: Any) -> None:
        async with sem:
            conns.append(await ep.connect(("127.0.0.1", port), timeout=30))

    results = await asyncio.gather(
        *(one(endpoints[k // PER_IDENTITY]) for k in range(n)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"  {len(failed)} handshakes failed, e.g. {failed[0]}", flush=True)
    return [endpoints, conns]


async def open_aioquic_sessions(port: int, n: int) -> list[Any]:
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(
        is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE, idle_timeout=120
    )
    managers = []
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            cm = connect("127.0.0.1", port, configuration=config)
            await cm.__aenter__()
            managers.append(cm)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"  {len(failed)} handshakes failed, e.g. {failed[0]!r}", flush=True)
    return managers


def _make_cert(directory: Path) -> tuple[str, str]:
    from bench.transport import make_cert

    cert, key = make_cert(directory)
    return str(cert), str(key)


def _spawn(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.transport_sessions", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(json.loads(line)["port"])


def measure(kind: str, n: int, settle: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    agent = None
    if kind == "agent":
        from node.cli import init_data_dir
        from tests.support import start_agent

        init_data_dir(tmp / "box")
        agent = start_agent(tmp / "box")
        pid, port = agent.process.pid, agent.udp[1]
        proc = None
    elif kind == "bitchat":
        proc, port = _spawn(["serve-bitchat"])
        pid = proc.pid
    else:
        cert, key = _make_cert(tmp)
        proc, port = _spawn(["serve-aioquic", cert, key])
        pid = proc.pid
    try:
        time.sleep(settle)
        before = _rss_mb(pid)
        opener = open_bitchat_sessions if kind in ("agent", "bitchat") else open_aioquic_sessions

        async def hold() -> tuple[float, int]:
            started = time.monotonic()
            held = await opener(port, n)
            took = time.monotonic() - started
            await asyncio.sleep(settle)
            count = len(held[1]) if kind != "aioquic" else len(held)
            return took, count

        took, count = asyncio.run(hold())
        after = _rss_mb(pid)
        return {"before": before, "after": after, "sessions": count, "open_s": took}
    finally:
        if agent is not None:
            try:
                agent.stop(timeout=30)
            except subprocess.TimeoutExpired:
                print("  the agent did not stop within 30 s of SIGTERM; killed", flush=True)
                agent.process.kill()
        if proc is not None:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve-bitchat"]:
        serve_bitchat()
        return 0
    if argv[:1] == ["serve-aioquic"]:
        serve_aioquic(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.transport_sessions", description=__doc__)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    parser.add_argument("--kinds", default="agent,bitchat,aioquic")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    rows = []
    for kind in args.kinds.split(","):
        r = measure(kind, args.sessions, args.settle)
        rows.append((kind, r))
        print(f"  {kind}: {json.dumps(r)}", flush=True)
    titles = {"agent": "bitchat agent (all services)", "bitchat": "bitchat Endpoint only",
              "aioquic": "aioquic server"}  # fmt: skip
    print(f"\nbench.transport_sessions: {args.sessions} idle sessions from "
          f"{(args.sessions + PER_IDENTITY - 1) // PER_IDENTITY} client identities on loopback; "
          "target: at most 25 MB for the sessions")  # fmt: skip
    print("| server | sessions | RSS before, MB | RSS after, MB | added, MB | kB per session |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, r in rows:
        added = r["after"] - r["before"]
        per = added * 1024 / max(r["sessions"], 1)
        print(f"| {titles[kind]} | {r['sessions']} | {r['before']:.1f} | {r['after']:.1f} | "
              f"{added:.1f} | {per:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
