"""The firmware's main program and BLE services under CPython, with fakes for the hardware."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioning.relay import enroll as host_enroll
from provisioning.relay import sealing
from tests.firmware.fakes import WDT, WLAN, Connection, board

CODE = "ABCDEFGHJKLMNPQR"
TOKEN = f"BR1:{'0a' * 8}:{'1b' * 32}:192.168.1.5:7701"


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with board() as b:
        from brelay import app, ble, cfg, led, prov, relay

        b.update(app=app, ble=ble, cfg=cfg, led=led, prov=prov, relay=relay)
        b["path"] = str(tmp_path / "relay.json")
        yield b


def enrolled(fw: dict[str, Any], **extra: object) -> dict[str, Any]:
    raw = {"relay_id": "0a" * 8, "key": "1b" * 32, "home": "127.0.0.1:9", "ssid": "home",
           "psk": "password1", "setup": CODE, "port_base": 47100, **extra}  # fmt: skip
    return fw["cfg"].parse(json.dumps(raw))  # type: ignore[no-any-return]


def test_first_boot_shows_the_setup_code_once(fw: dict[str, Any], capsys: Any) -> None:
    c = fw["app"].boot_config(fw["path"])
    code = c["setup"]
    assert len(code) == 16 and "setup code: " + code[:4] in capsys.readouterr().out
    again = fw["app"].boot_config(fw["path"])
    assert again["setup"] == code and "setup code" not in capsys.readouterr().out
    assert "relay_id" not in again


def test_epoch_grows_every_boot_once_enrolled(fw: dict[str, Any]) -> None:
    fw["cfg"].save(enrolled(fw)["raw"], fw["path"])
    epochs = [fw["app"].boot_config(fw["path"])["epoch"] for _ in range(3)]
    assert epochs == [1, 2, 3]


def test_watchdog_starts_after_grace_and_is_fed_only_by_a_healthy_loop(fw: dict[str, Any]) -> None:
    app = fw["app"].App(enrolled(fw), fw["machine"].Pin(2), lambda: 0, 0, path=fw["path"])
    t = 0
    while t < fw["app"].GRACE_MS:
        app.turn(t)
        t += 1000
    assert WDT.created == []
    app.turn(t)
    assert len(WDT.created) == 1 and WDT.created[0].feeds == 0
    app.turn(t + 100)
    assert WDT.created[0].feeds == 1
    app.turn(t + 100 + 5000)  # a turn that came late: the loop is not healthy, no feed
    assert WDT.created[0].feeds == 1
    app.turn(t + 5200)
    assert WDT.created[0].feeds == 2


def test_wifi_loss_and_return_restart_the_relay(fw: dict[str, Any]) -> None:
    relay = fw["relay"]
    app = fw["app"].App(enrolled(fw), fw["machine"].Pin(2), lambda: 0, 0, path=fw["path"])
    wlan = WLAN.instances[0]
    app.turn(0)
    assert app.relay.state == relay.OFFLINE and wlan.connects == [("home", "password1")]
    assert app.pattern() is fw["led"].CONNECTING
    for t in range(100, 20000, 100):
        app.turn(t)
    # Connection attempts back off: 2 s, 4 s, 8 s ...
    assert 3 <= len(wlan.connects) <= 5
    wlan.up = True
    app.turn(20000)
    assert app.relay.state == relay.REGISTERING
    wlan.up = False
    app.turn(20100)
    assert app.relay.state == relay.OFFLINE
    app.relay.stop()


def test_gc_runs_on_schedule_and_under_pressure(fw: dict[str, Any]) -> None:
    app = fw["app"].App(enrolled(fw), fw["machine"].Pin(2), lambda: 0, 0, path=fw["path"])
    heap = fw["heap"]
    for t in range(0, 30000, 100):
        app.turn(t)
    assert heap["collects"] == 2  # at 10 s and 20 s
    heap["free"] = 1000
    app.turn(30100)
    app.turn(30200)
    assert heap["collects"] == 4


def test_led_patterns_follow_the_state(fw: dict[str, Any]) -> None:
    led = fw["led"]
    pin = fw["machine"].Pin(2)
    status = led.Led(pin, 0)
    status.set(led.PAIRING, 0)
    for t in range(0, 1000, 50):
        status.tick(t)
    assert pin.history == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    status.set(led.RELAYING, 1000)
    for t in range(1000, 5000, 50):
        status.tick(t)
    assert pin.history[11:] == [1, 0, 1, 0]
    unenrolled = fw["app"].App(fw["cfg"].parse(json.dumps({"setup": CODE})), pin, lambda: 0, 0)
    assert unenrolled.pattern() is led.PAIRING  # first boot: pairing mode


def make_services(fw: dict[str, Any], pairing: bool) -> tuple[Any, list[Any], list[bytes]]:
    configs: list[Any] = []
    to_box: list[bytes] = []
    p = fw["prov"].Provisioner(CODE, 0, pairing)
    svc = fw["ble"].BleServices(p, configs.append, lambda f: to_box.append(bytes(f)) or True,
                                lambda: 10)  # fmt: skip
    return svc, configs, to_box


async def connect(fw: dict[str, Any], svc: Any, mtu: int) -> tuple[Connection, asyncio.Task[None]]:
    conn = Connection(mtu)
    task = asyncio.create_task(svc.run())
    fw["aioble"].centrals.put_nowait(conn)
    for _ in range(20):
        await asyncio.sleep(0)
    return conn, task


async def test_gatt_database_is_small(fw: dict[str, Any]) -> None:
    svc, _, _ = make_services(fw, True)
    services = fw["aioble"].registered
    chars = [c for s in services for c in s.characteristics]
    assert len(services) == 2 and len(chars) == 4
    # Attribute table estimate: service declaration 2+16, characteristic declaration 2+19,
    # value 2+16+value, CCCD 2+2 for notify; the Pico W's limit is 512 bytes.
    size = sum(18 for _ in services) + sum(
        21 + 18 + len(c.value) + (4 if c.flags.get("notify") else 0) for c in chars
    )
    assert size < 512
    assert not any(c.flags.get("read") for c in chars if c.uuid != fw["ble"].STATUS_UUID)
    assert svc.secure and fw["aioble"].core.ble.configured["le_secure"] is True


async def test_provisioning_over_ble(fw: dict[str, Any]) -> None:
    svc, configs, _ = make_services(fw, True)
    conn, task = await connect(fw, svc, 64)
    state, nonce, _ = host_enroll.parse_status(svc.status.value)
    assert state == 1
    frame = sealing.seal(CODE, nonce, sealing.request("home", "secret-psk", TOKEN))
    for part in sealing.chunks(frame, conn.mtu):
        svc.request.writes.put_nowait((conn, part))
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(configs) == 1 and configs[0]["psk"] == "secret-psk"
    assert configs[0]["home"] == ("192.168.1.5", 7701)
    state, _, result = host_enroll.parse_status(svc.status.notified[-1][1])
    assert (state, result) == (2, 0)
    seen = [v for _, v in svc.status.notified] + [svc.status.value]
    assert not any(b"secret-psk" in v or bytes.fromhex("1b" * 32) in v for v in seen)
    conn.gone.set()
    task.cancel()


async def test_provisioning_refused_outside_pairing_mode(fw: dict[str, Any]) -> None:
    svc, configs, _ = make_services(fw, False)
    conn, task = await connect(fw, svc, 100)
    _, nonce, _ = host_enroll.parse_status(svc.status.value)
    frame = sealing.seal(CODE, nonce, sealing.request("home", "secret-psk", TOKEN))
    for part in sealing.chunks(frame, conn.mtu):
        svc.request.writes.put_nowait((conn, part))
    for _ in range(50):
        await asyncio.sleep(0)
    assert configs == []
    assert host_enroll.parse_status(svc.status.notified[-1][1])[2] == 1
    task.cancel()


async def test_bridge_carries_frames_both_ways_in_mtu_chunks(fw: dict[str, Any]) -> None:
    svc, _, to_box = make_services(fw, False)
    conn, task = await connect(fw, svc, 40)
    frame = bytes(range(256)) * 2
    for part in sealing.chunks(frame, conn.mtu):
        svc.rx.writes.put_nowait((conn, part))
    for _ in range(50):
        await asyncio.sleep(0)
    assert to_box == [frame]
    svc.to_peer(frame[::-1])
    for _ in range(100):
        await asyncio.sleep(0)
    parts = [d for _, d in svc.tx.notified]
    assert all(len(p) <= conn.mtu - 3 for p in parts) and len(parts) == 15
    assert b"".join(p[1:] for p in parts) == frame[::-1]
    conn.gone.set()
    task.cancel()


async def test_no_le_secure_connections_still_seals(fw: dict[str, Any]) -> None:
    fw["aioble"].core.ble.secure = False
    svc, _, _ = make_services(fw, True)
    assert svc.secure is False
