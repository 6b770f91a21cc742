"""Relay benchmark: forwarding rate and added latency, heap per forwarded frame, bundle size.

    .venv/bin/python -m bench.relay [--loopback] [--seconds 3]

The relay is the firmware's engine (``firmware/micropython/brelay``) running under CPython
with its real socket code in a process of its own. In the lab (root, ``ip``, ``nft``) it is a
public host between alice and bob, each behind a router with symmetric NAT, and its home box
is another public host; without the lab (or with ``--loopback``) everything runs on
127.0.0.1, and the output says so. Added latency: the median round trip alice → relay → bob →
relay → alice, minus the median round trips alice ↔ relay host and bob ↔ relay host, halved
(two forwards per round trip). Session figures (lab only): the agent's own transport session
from a peer behind symmetric NAT to a box behind symmetric NAT through the box's board (the
box's open allocation), beside a session from the same peer to a public node: median round
trip of a 64-byte stream echo, and a 1 MiB echo's rate both ways. Heap per frame: the same
engine inside MicroPython's WebAssembly port (``gc.mem_alloc()`` deltas around each
forwarding turn, steady state).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from node import state
from node.overlay.records import relay_kind
from node.relays.manager import AllocGranted, RelayManager
from node.relays.store import RelayStore

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware" / "micropython"
PORT_BASE = 47710
FRAME = 200
PINGS = 400


# -- the relay process ------------------------------------------------------------------------


def serve(config_path: str) -> None:
    """Run the firmware engine on real sockets until stdin closes (the bench's child)."""
    sys.path.insert(0, str(FIRMWARE))
    import types

    mp = types.ModuleType("micropython")
    mp.const = lambda x: x  # type: ignore[attr-defined]
    sys.modules["micropython"] = mp
    from brelay import cfg, ticks
    from brelay import relay as fw_relay
    from brelay.net import Net

    doc = json.loads(Path(config_path).read_text())
    c = cfg.parse(json.dumps(doc["config"]))
    r = fw_relay.Relay(c, Net(doc["bind"]))
    r.start(ticks.ms())
    print("relay running", flush=True)
    while True:
        now = ticks.ms()
        r.step(now)
        moved = r.pump(now)
        if moved:
            continue
        fds = [s.fileno() for s in r.sockets()] + [sys.stdin.fileno()]
        ready, _, _ = select.select(fds, [], [], min(r.next_deadline(now), 50) / 1000)
        if sys.stdin.fileno() in ready and not sys.stdin.read(1):
            return


# -- the home box ---------------------------------------------------------------------------


class HomeBox:
    def __init__(self, db_path: Path, sock: socket.socket) -> None:
        self.db = state.open_state(db_path)
        self.store = RelayStore(self.db)
        self.manager = RelayManager(self.store, keepalive_ms=5000)
        self.sock = sock
        self.sock.setblocking(False)

    def pump(self, wait: float) -> list[Any]:
        select.select([self.sock], [], [], wait)
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            for out in self.manager.receive(data, addr, time.time()):
                self.sock.sendto(*out)
        events = []
        while (ev := self.manager.next_event()) is not None:
            events.append(ev)
        return events


def _until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"bench: {what} did not happen within {timeout} s")


def _ping(sender: socket.socket, dest: tuple[str, int], echo: Callable[[], None],
          receiver: socket.socket) -> float:  # fmt: skip
    t0 = time.perf_counter()
    sender.sendto(b"p" * 64, dest)
    echo()
    if not select.select([receiver], [], [], 1.0)[0]:
        return float("nan")
    receiver.recv(2048)
    return time.perf_counter() - t0


def _echo_once(sock: socket.socket, to: tuple[str, int] | None = None) -> Callable[[], None]:
    def run() -> None:
        if select.select([sock], [], [], 1.0)[0]:
            data, addr = sock.recvfrom(2048)
            sock.sendto(data, to or addr)

    return run


def _median_ms(samples: list[float]) -> float:
    ok = [s for s in samples if s == s]
    return statistics.median(ok) * 1000 if ok else float("nan")


@contextlib.contextmanager
def _places(loopback: bool) -> Iterator[dict[str, Any]]:
    """Where each party lives: lab namespaces, or all on loopback."""
    if not loopback:
        try:
            from lab import Lab, Nat

            if os.geteuid() != 0:
                raise PermissionError("the lab needs root")
            with Lab() as lab:
                relay = lab.public_host("relay")
                home = lab.public_host("home")
                ra = lab.router("a", Nat.SYMMETRIC)
                rb = lab.router("b", Nat.SYMMETRIC)
                alice, bob = ra.host("alice"), rb.host("bob")
                yield {
                    "where": "lab: relay and home box public, alice and bob behind symmetric NAT",
                    "relay_addr": relay.addr, "home_addr": home.addr,
                    "relay_popen": lambda args: relay.python(*args, module="bench.relay",
                                                             stdin=subprocess.PIPE,
                                                             stdout=subprocess.PIPE),
                    "relay_sock": relay.socket, "home_sock": home.socket,
                    "alice": alice.socket, "bob": bob.socket,
                    "ip_a": ra.wan_addr, "ip_b": rb.wan_addr,
                }  # fmt: skip
                return
        except Exception as exc:  # the lab is optional for a bench: fall back, and say why
            print(f"lab not available ({type(exc).__name__}: {exc}); measuring on loopback")

    def udp() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def popen(args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "bench.relay", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    yield {"where": "loopback (127.0.0.1): no lab", "relay_addr": "127.0.0.1",
           "home_addr": "127.0.0.1", "relay_popen": popen, "relay_sock": udp, "home_sock": udp,
           "alice": udp, "bob": udp, "ip_a": "127.0.0.1", "ip_b": "127.0.0.1"}  # fmt: skip


def network_figures(loopback: bool, seconds: float) -> dict[str, Any]:
    with _places(loopback) as p, tempfile.TemporaryDirectory() as tmp:
        hsock = p["home_sock"]()
        hsock.bind((p["home_addr"], 0))
        box = HomeBox(Path(tmp) / "state.db", hsock)
        rec = box.store.issue("bench")
        cfg_path = Path(tmp) / "relay.json"
        relay_cfg = {
            "relay_id": rec.relay_id.hex(),
            "key": rec.key.hex(),
            "home": f"{p['home_addr']}:{hsock.getsockname()[1]}",
            "port_base": PORT_BASE,
        }
        cfg_path.write_text(json.dumps({"bind": p["relay_addr"], "config": relay_cfg}))
        proc = p["relay_popen"](["--serve", str(cfg_path)])
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            _until(lambda: bool(box.pump(0.05)) or rec.relay_id in box.manager.sessions,
                   "relay registration")  # fmt: skip
            _, out = box.manager.allocate(
                rec.relay_id, time.time(), ip_a=p["ip_a"], ip_b=p["ip_b"],
                byte_quota=(1 << 30) - 1, packet_quota=(1 << 30) - 1, idle_ms=60000,
            )  # fmt: skip
            box.sock.sendto(*out)
            granted: list[AllocGranted] = []

            def got_grant() -> bool:
                granted.extend(e for e in box.pump(0.05) if isinstance(e, AllocGranted))
                return bool(granted)

            _until(got_grant, "allocation")
            pa = (p["relay_addr"], granted[0].ports[0])
            pb = (p["relay_addr"], granted[0].ports[1])
            alice, bob = p["alice"](), p["bob"]()
            bob.sendto(b"latch", pb)
            time.sleep(0.05)
            alice.sendto(b"latch", pa)
            select.select([bob], [], [], 1.0)
            bob.recv(2048)

            via = [_ping(alice, pa, _echo_once(bob, pb), alice) for _ in range(PINGS)]
            echo = p["relay_sock"]()
            echo.bind((p["relay_addr"], 0))
            eaddr = (p["relay_addr"], echo.getsockname()[1])
            to_a = [_ping(alice, eaddr, _echo_once(echo), alice) for _ in range(PINGS)]
            to_b = [_ping(bob, eaddr, _echo_once(echo), bob) for _ in range(PINGS)]
            added = (_median_ms(via) - _median_ms(to_a) - _median_ms(to_b)) / 2

            alice.setblocking(False)
            bob.setblocking(False)
            frame = bytes(FRAME)
            sent = got = 0
            end = time.monotonic() + seconds
            t0 = time.monotonic()
            while time.monotonic() < end:
                while sent - got < 32:
                    alice.sendto(frame, pa)
                    sent += 1
                select.select([bob], [], [], 0.05)
                while True:
                    try:
                        bob.recv(2048)
                        got += 1
                    except BlockingIOError:
                        break
                if sent - got >= 32 and not select.select([bob], [], [], 0.2)[0]:
                    sent = got  # a window lost entirely: go on
            elapsed = time.monotonic() - t0
            return {
                "where": p["where"],
                "rtt_via_relay_ms": round(_median_ms(via), 3),
                "rtt_alice_relay_host_ms": round(_median_ms(to_a), 3),
                "rtt_bob_relay_host_ms": round(_median_ms(to_b), 3),
                "added_latency_per_forward_ms": round(added, 3),
                "forwarded_frames_per_s": round(got / elapsed),
                "forwarded_mbit_per_s": round(got * FRAME * 8 / elapsed / 1e6, 2),
                "frame_bytes": FRAME,
            }
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
            box.db.conn.close()


# -- a transport session through a board -------------------------------------------------------

SESSION_PINGS = 100
SESSION_BYTES = 1 << 20


async def _session_figures(tmp: Path) -> dict[str, Any]:
    import asyncio

    from lab import Lab, Nat
    from tests.firmware import boxrig as rig

    async def measure(conn: Any, prefix: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rtts = []
        for _ in range(SESSION_PINGS):
            t0 = loop.time()
            await rig.echo(conn, b"p" * 64)
            rtts.append(loop.time() - t0)
        payload = os.urandom(SESSION_BYTES)
        t0 = loop.time()
        assert await rig.echo(conn, payload, timeout=60) == payload
        took = loop.time() - t0
        return {
            f"{prefix}_stream_rtt_ms": round(statistics.median(rtts) * 1000, 3),
            f"{prefix}_echo_mbit_per_s": round(2 * SESSION_BYTES * 8 / took / 1e6, 2),
        }

    with Lab() as lab:
        pub_ns, board_ns = lab.public_host("pub"), lab.public_host("board")
        rh, rp = lab.router("h", Nat.SYMMETRIC), lab.router("p", Nat.SYMMETRIC)
        box_ns, peer_ns = rh.host("box"), rp.host("peer")
        rig.forward_port(rh, box_ns.addr, 7701)
        pub = await rig.start_node(tmp / "pub", listen=f"{pub_ns.addr}:7700",
                                   enter=pub_ns.entered)  # fmt: skip
        box = await rig.start_node(tmp / "box", listen=f"{box_ns.addr}:7700",
                                   enter=box_ns.entered, relays_listen="0.0.0.0:7701",
                                   keepalive_ms=5000)  # fmt: skip
        peer = await rig.start_node(tmp / "peer", listen=f"{peer_ns.addr}:7700",
                                    enter=peer_ns.entered)  # fmt: skip
        svc = rig.relays_of(box)
        enrolled = svc.enroll("bench", f"{rh.wan_addr}:7701")
        peer_ep = rig.nat_of(peer).endpoint
        assert peer_ep is not None
        out: dict[str, Any] = {}
        try:
            direct = await peer_ep.connect(
                (pub_ns.addr, 7700), peer_public_key=pub.identity.public_key
            )
            out.update(await measure(direct, "session_direct_to_public_node"))
            async with rig.running(box):
                with rig.relay_board(tmp, enrolled, board_ns.addr, 7710, popen=board_ns.python):
                    await rig.until(svc.record_offers, "an offer on the board")
                    _, where = relay_kind(svc.record_offers()[0])
                    host, port = where.rsplit(":", 1)
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    key = box.identity.public_key
                    conn = await peer_ep.connect((host, int(port)), peer_public_key=key)
                    out["session_via_board_handshake_ms"] = round((loop.time() - t0) * 1000, 2)
                    out.update(await measure(conn, "session_via_board"))
        finally:
            for ctx in (peer, box, pub):
                await rig.stop_node(ctx)
    out["session_where"] = "lab: box and peer behind symmetric NAT, board and public node public"
    return out


def session_figures() -> dict[str, Any]:
    """A transport session of the agent through a board, beside a direct one (lab only)."""
    import asyncio

    if os.geteuid() != 0:
        print("session figures skipped: the lab needs root")
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(_session_figures(Path(tmp)))


# -- under MicroPython ------------------------------------------------------------------------

MP_SCRIPT = """
import gc, sys, random
sys.path.insert(0, '/lib')
import brelay.rand
brelay.rand.urandom = lambda n: bytes(random.getrandbits(8) for _ in range(n))
import checks_rig as rig
r, box = rig.make_rig()
a, b, pa, pb = rig.allocate(r, box, 1)
frame = bytes(%(frame)d)
buf = bytearray(2048)
for _ in range(100):
    a.sendto(frame, pa); r.pump(1); b.readinto(buf)
gc.collect(); gc.disable()
n = %(n)d
pump_bytes = 0
turn_bytes = 0
for i in range(n):
    a.sendto(frame, pa)
    m0 = gc.mem_alloc()
    r.pump(2)
    m1 = gc.mem_alloc()
    r.step(2)
    m2 = gc.mem_alloc()
    pump_bytes += m1 - m0
    turn_bytes += m2 - m0
    b.readinto(buf)
gc.enable()
print("RESULT", n, pump_bytes, turn_bytes)
"""


def micropython_figures(frames: int = 2000) -> dict[str, Any]:
    from provisioning.relay import bundle
    from tests.firmware import test_micropython as tm

    with tempfile.TemporaryDirectory() as tmp:
        b = bundle.build("rp2", Path(tmp))
        files = {f"/lib/{f.path[4:]}": b.data(f) for f in b.files if f.path.startswith("lib/")}
    mp_dir = Path(tm.HERE) / "mp"
    for fake in ("socket.py", "machine.py", "network.py"):
        files[f"/lib/{fake}"] = (mp_dir / fake).read_bytes()
    checks = (mp_dir / "checks.py").read_text()
    # The rig helpers of the MicroPython checks, without running the checks themselves.
    files["/lib/checks_rig.py"] = checks.split("\nCHECKS = ")[0].encode()
    files["/vectors.json"] = json.dumps(tm.vectors()).encode()
    proc = tm.run_micropython(files, MP_SCRIPT % {"frame": FRAME, "n": frames})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"bench: MicroPython run failed: {proc.stdout[-500:]}{proc.stderr}")
    _, n, pump_bytes, turn_bytes = line.split()
    return {
        "micropython_frames": int(n),
        "heap_bytes_per_frame_pump": int(pump_bytes) / int(n),
        "heap_bytes_per_frame_pump_and_step": int(turn_bytes) / int(n),
    }


def bundle_figures() -> dict[str, Any]:
    from provisioning.relay import bundle

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in bundle.TARGETS:
            b = bundle.build(target, Path(tmp))
            out[f"bundle_{target}_bytes"] = b.total_bytes
            out[f"bundle_{target}_mpy_bytes"] = sum(
                f.size for f in b.files if f.path.endswith(".mpy")
            )
            out["mpy_cross"] = b.mpy_cross
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loopback", action="store_true", help="skip the lab")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    figures: dict[str, Any] = {}
    figures.update(network_figures(args.loopback, args.seconds))
    if not args.loopback:
        figures.update(session_figures())
    figures.update(micropython_figures())
    figures.update(bundle_figures())
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
