"""A relay (firmware engine, real sockets) and a home box (RelayManager, real socket) in-process.

Both are stepped by hand on a fake clock; datagrams travel over real loopback (or lab) UDP.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from node import state
from node.relays import _wire as w
from node.relays.manager import Event, RelayManager
from node.relays.store import RelayRecord, RelayStore
from tests.firmware.fakes import install_micropython

install_micropython()
from brelay import relay as fw_relay  # noqa: E402
from brelay.net import Net  # noqa: E402


def free_port_base(host: str = "127.0.0.1", count: int = 8) -> int:
    """A base port with ``count`` consecutive free UDP ports."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((host, 0))
        base = probe.getsockname()[1]
        probe.close()
        if base + count >= 65000:
            continue
        socks = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


class Box:
    """The home box's relay manager on a real UDP socket."""

    def __init__(self, db_path: Path, host: str = "127.0.0.1", keepalive_ms: int = 15000):
        self.db = state.open_state(db_path)
        self.store = RelayStore(self.db)
        self.manager = RelayManager(self.store, keepalive_ms=keepalive_ms)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.events: list[Event] = []
        self.wall = 1_700_000_000.0

    def restart(self, keepalive_ms: int = 15000) -> None:
        """A new manager on the same state.db (what a box restart keeps)."""
        self.manager = RelayManager(self.store, keepalive_ms=keepalive_ms)

    def send(self, out: tuple[bytes, tuple[str, int]] | None) -> None:
        if out is not None:
            self.sent.append(out)
            self.sock.sendto(*out)

    def pump(self) -> int:
        n = 0
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            n += 1
            for out in self.manager.receive(data, addr, self.wall):
                self.send(out)
        while (ev := self.manager.next_event()) is not None:
            self.events.append(ev)
        return n

    def close(self) -> None:
        self.sock.close()
        self.db.conn.close()


class Rig:
    """One box, one relay on a fake clock; :meth:`settle` moves datagrams until quiet.

    ``relay_ctx``/``box_ctx`` (lab namespaces' ``entered``) make each side's sockets inside
    its own network namespace.
    """

    def __init__(
        self,
        tmp: Path,
        host: str = "127.0.0.1",
        keepalive_ms: int = 15000,
        *,
        relay_host: str | None = None,
        relay_ctx: Callable[[], AbstractContextManager[None]] = nullcontext,
        box_ctx: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.relay_ctx = relay_ctx
        with box_ctx():
            self.box = Box(tmp / "state.db", host, keepalive_ms)
        self.record: RelayRecord = self.box.store.issue("test")
        self.now = 1000
        relay_host = relay_host or host
        with relay_ctx():
            self.base = free_port_base(relay_host)
        self.cfg: dict[str, Any] = {
            "relay_id": self.record.relay_id,
            "key": self.record.key,
            "home": self.box.address,
            "port_base": self.base,
            "epoch": 1,
        }
        self.heap = 50000
        self.relay = fw_relay.Relay(self.cfg, Net(relay_host), heap=lambda: self.heap)
        self.extra: list[socket.socket] = []

    def pump_relay(self) -> int:
        with self.relay_ctx():
            return int(self.relay.pump(self.now))

    def _readable(self) -> list[Any]:
        return [self.box.sock, *self.relay.sockets()]

    def settle(self, rounds: int = 40) -> None:
        """Move datagrams until three rounds in a row see nothing (each waits up to 5 ms)."""
        quiet = 0
        while quiet < 3 and rounds:
            rounds -= 1
            moved = self.pump_relay() + self.box.pump()
            self.relay.step(self.now)
            quiet = 0 if moved else quiet + 1
            if not moved:
                select.select(self._readable(), [], [], 0.005)

    def advance(self, ms: int) -> None:
        self.now += ms
        self.box.wall += ms / 1000
        self.relay.step(self.now)
        self.settle()

    def register(self) -> None:
        with self.relay_ctx():
            self.relay.start(self.now)
        self.relay.step(self.now)
        self.settle()
        assert self.relay.state == fw_relay.RUNNING

    def allocate(self, **kw: Any) -> tuple[int, tuple[int, int]]:
        spec = {"byte_quota": 1 << 20, "packet_quota": 1000, "idle_ms": 5000, **kw}
        alloc_id, out = self.box.manager.allocate(self.record.relay_id, self.box.wall, **spec)
        self.box.send(out)
        self.settle()
        granted = [e for e in self.box.events if getattr(e, "alloc_id", None) == alloc_id]
        assert granted, "no answer to ALLOC"
        ev = granted[-1]
        return alloc_id, getattr(ev, "ports", (0, 0))

    def peer(self, host: str = "127.0.0.1") -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(2.0)
        self.extra.append(s)
        return s

    def recv(self, s: socket.socket) -> bytes | None:
        """A datagram for ``s`` after letting the relay run, or None if none came (200 ms)."""
        for _ in range(40):
            self.pump_relay()
            r, _, _ = select.select([s, *self.relay.sockets()], [], [], 0.005)
            if s in r:
                return s.recv(4096)
        return None

    def close(self) -> None:
        self.relay.stop()
        for s in self.extra:
            s.close()
        self.box.close()


def wait_readable(s: socket.socket, timeout: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if select.select([s], [], [], 0.01)[0]:
            return True
    return False


__all__ = ["Box", "Rig", "free_port_base", "w"]
