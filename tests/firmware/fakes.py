"""Small in-memory stand-ins for MicroPython's hardware modules, for host tests only.

They record what the firmware did (pin levels with timestamps, watchdog feeds, Wi-Fi
connects, notifications) so tests can assert on it, like gpiozero's MockFactory.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware" / "micropython"
TICKS_PERIOD = 1 << 30


class Clock:
    """A hand-stepped ticks_ms clock."""

    def __init__(self, start: int = 0) -> None:
        self.ms = start

    def ticks_ms(self) -> int:
        return self.ms & (TICKS_PERIOD - 1)

    def advance(self, ms: int) -> int:
        self.ms += ms
        return self.ticks_ms()


class Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2

    def __init__(self, ident: Any = None, mode: int = 0, pull: int | None = None) -> None:
        self.ident = ident
        self.level = 1 if pull == self.PULL_UP else 0
        self.history: list[int] = []

    def value(self, v: int | None = None) -> int:
        if v is None:
            return self.level
        self.level = v
        self.history.append(v)
        return v


class WDT:
    created: list[WDT] = []

    def __init__(self, timeout: int = 5000) -> None:
        self.timeout = timeout
        self.feeds = 0
        WDT.created.append(self)

    def feed(self) -> None:
        self.feeds += 1


class WLAN:
    """Station interface whose link the test switches with ``up``."""

    instances: list[WLAN] = []

    def __init__(self, iface: int) -> None:
        self.up = False
        self.connects: list[tuple[str, str]] = []
        self.activated = False
        WLAN.instances.append(self)

    def isconnected(self) -> bool:
        return self.up

    def active(self, on: bool | None = None) -> bool:
        if on is not None:
            self.activated = on
        return self.activated

    def connect(self, ssid: str, psk: str) -> None:
        self.connects.append((ssid, psk))


class UUID:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UUID) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


class FakeBLE:
    def __init__(self, secure: bool) -> None:
        self.secure = secure
        self.configured: dict[str, Any] = {}

    def config(self, **kw: Any) -> None:
        if not self.secure:
            raise ValueError("unknown config param")
        self.configured.update(kw)


class Connection:
    def __init__(self, mtu: int = 23) -> None:
        self.mtu = mtu
        self.gone = asyncio.Event()

    async def exchange_mtu(self, mtu: int) -> None:
        self.mtu = min(self.mtu, mtu) if self.mtu > 23 else self.mtu

    async def disconnected(self, timeout_ms: int | None = None) -> None:
        await self.gone.wait()


class Characteristic:
    def __init__(self, service: Service, uuid: UUID, **flags: bool) -> None:
        self.uuid = uuid
        self.flags = flags
        self.value = b""
        self.notified: list[tuple[Connection, bytes]] = []
        self.writes: asyncio.Queue[tuple[Connection, bytes]] = asyncio.Queue()
        service.characteristics.append(self)

    def write(self, data: bytes, send_update: bool = False) -> None:
        self.value = bytes(data)

    def notify(self, conn: Connection, data: bytes | None = None) -> None:
        self.notified.append((conn, bytes(data if data is not None else self.value)))

    async def written(self, timeout_ms: int | None = None) -> tuple[Connection, bytes]:
        return await self.writes.get()


class Service:
    def __init__(self, uuid: UUID) -> None:
        self.uuid = uuid
        self.characteristics: list[Characteristic] = []


class Aioble(types.ModuleType):
    """The subset of aioble the firmware uses; the test plays the central."""

    def __init__(self, secure: bool) -> None:
        super().__init__("aioble")
        self.Service = Service
        self.Characteristic = Characteristic
        self.core = types.SimpleNamespace(ble=FakeBLE(secure))
        self.registered: list[Service] = []
        self.centrals: asyncio.Queue[Connection] = asyncio.Queue()
        self.advertised: list[dict[str, Any]] = []

    def register_services(self, *services: Service) -> None:
        self.registered.extend(services)

    async def advertise(self, interval_us: int, **kw: Any) -> Connection:
        self.advertised.append(kw)
        return await self.centrals.get()


class ThreadSafeFlag(asyncio.Event):
    """MicroPython's ThreadSafeFlag: like an Event, but a wait() consumes the flag."""

    async def wait(self) -> bool:  # type: ignore[override]
        await super().wait()
        self.clear()
        return True


async def sleep_ms(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


def install_micropython() -> None:
    """Make ``from micropython import const`` and ``import brelay`` work under CPython."""
    if "micropython" not in sys.modules:
        mp = types.ModuleType("micropython")
        mp.const = lambda x: x  # type: ignore[attr-defined]
        sys.modules["micropython"] = mp
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))


@contextmanager
def board(secure_ble: bool = True, free_heap: int = 100_000) -> Iterator[dict[str, Any]]:
    """Install machine, network, bluetooth and aioble (and gc.mem_free) for brelay.app/ble."""
    import gc

    install_micropython()
    WDT.created.clear()
    WLAN.instances.clear()
    machine = types.ModuleType("machine")
    machine.Pin = Pin  # type: ignore[attr-defined]
    machine.WDT = WDT  # type: ignore[attr-defined]
    resets: list[int] = []
    machine.reset = lambda: resets.append(1)  # type: ignore[attr-defined]
    network = types.ModuleType("network")
    network.WLAN = WLAN  # type: ignore[attr-defined]
    network.STA_IF = 0  # type: ignore[attr-defined]
    bluetooth = types.ModuleType("bluetooth")
    bluetooth.UUID = UUID  # type: ignore[attr-defined]
    aioble = Aioble(secure_ble)
    saved = {n: sys.modules.get(n) for n in ("machine", "network", "bluetooth", "aioble")}
    heap = {"free": free_heap, "collects": 0}
    real_collect = gc.collect

    def collect() -> int:
        heap["collects"] += 1
        return 0

    gc.mem_free = lambda: heap["free"]  # type: ignore[attr-defined]
    gc.collect = collect
    sys.modules.update(machine=machine, network=network, bluetooth=bluetooth, aioble=aioble)
    added_flag = not hasattr(asyncio, "ThreadSafeFlag")
    if added_flag:
        asyncio.ThreadSafeFlag = ThreadSafeFlag  # type: ignore[attr-defined]
        asyncio.sleep_ms = sleep_ms  # type: ignore[attr-defined]
    # brelay.app and brelay.ble bind the hardware modules at import: import them afresh.
    pkg = sys.modules.get("brelay")
    for name in ("app", "ble"):
        sys.modules.pop(f"brelay.{name}", None)
        if pkg is not None and hasattr(pkg, name):
            delattr(pkg, name)
    try:
        yield {"machine": machine, "aioble": aioble, "resets": resets, "heap": heap}
    finally:
        gc.collect = real_collect
        del gc.mem_free  # type: ignore[attr-defined]
        if added_flag:
            del asyncio.ThreadSafeFlag  # type: ignore[attr-defined]
            del asyncio.sleep_ms  # type: ignore[attr-defined]
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
