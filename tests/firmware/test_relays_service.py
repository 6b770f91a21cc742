"""The box side end to end: a real agent issues a key over HTTP, `relay flash` writes it to a
(fake) board, and the firmware engine with that config registers with the agent's relays
service; plus the service's allocation API driven by a relay in-process."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from brelay import cfg as fw_cfg
from brelay import relay as fw_relay
from brelay.net import Net
from click.testing import CliRunner

from node import config, identity, state
from node.agent import AgentContext, read_runtime
from node.events import EventLog
from node.relays.service import RelayError, RelaysService
from provisioning.cli import main as fleet
from provisioning.relay import bundle, enroll
from tests.firmware.fakeboard import FakeBoard
from tests.support import RunningAgent, start_agent


@pytest.fixture
def relay_agent(data_dir: Path) -> Iterator[RunningAgent]:
    path = data_dir / "config.toml"
    text = path.read_text()
    assert "\n[relays]\n" in text
    path.write_text(
        text.replace("\n[relays]\n", '\n[relays]\nlisten = "127.0.0.1:0"\nkeepalive_ms = 1000\n')
    )
    running = start_agent(data_dir)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc: dict[str, object] = json.loads(resp.read())
    return doc


def test_enroll_flash_register(relay_agent: RunningAgent, tmp_path: Path) -> None:
    token = (relay_agent.data_dir / "admin.token").read_text().strip()
    web = relay_agent.web.rstrip("/")
    with pytest.raises(enroll.FleetError, match="401"):
        enroll.issue_key(web, "wrong-token", "x")
    built = bundle.build("rp2", tmp_path / "bundle")
    (tmp_path / "flash").mkdir()
    board = FakeBoard(tmp_path / "flash", window=64)
    try:
        result = CliRunner().invoke(fleet, [
            "relay", "flash", "--port", board.port, "--target", "rp2", "--home", web,
            "--token", token, "--name", "attic", "--ssid", "home", "--bundle-dir",
            str(built.root),
        ], env={"BITCHAT_WIFI_PSK": "password1"})  # fmt: skip
    finally:
        board.close()
    assert result.exit_code == 0, result.output
    assert "setup code for the label" in result.output
    on_board = fw_cfg.parse((board.root / "relay.json").read_text())
    assert on_board["psk"] == "password1" and on_board["setup"]
    relays = _get(f"{web}/api/relays")["relays"]
    assert isinstance(relays, list) and relays[0]["name"] == "attic"
    assert relays[0]["online"] is False

    # The firmware, with exactly the config the board got, registers with the running agent.
    runtime = read_runtime(relay_agent.data_dir)
    assert runtime is not None
    host, port = runtime["relays"].rsplit(":", 1)
    assert on_board["home"] == (host, int(port))
    engine = fw_relay.Relay(on_board, Net("127.0.0.1"))
    engine.start(0)
    now = 0
    for _ in range(300):
        engine.step(now)
        engine.pump(now)
        if engine.state == fw_relay.RUNNING:
            break
        time.sleep(0.01)
        now += 10
    engine.stop()
    assert engine.state == fw_relay.OFFLINE and engine.registrations >= 1
    status = _get(f"{web}/api/status")["services"]
    assert status["relays"]["online"] == 1  # type: ignore[index]
    listed = _get(f"{web}/api/relays")
    assert listed["offers"][0]["relay_id"] == on_board["relay_id"].hex()  # type: ignore[index]


def test_enroll_route_checks_input(relay_agent: RunningAgent) -> None:
    token = (relay_agent.data_dir / "admin.token").read_text().strip()
    url = relay_agent.web.rstrip("/") + "/api/relays/enroll"
    for body in (b"not json", b"[]", b'{"name": 5}', b'{"name": "x", "home": "nope"}'):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400


async def test_service_allocates_through_a_relay(tmp_path: Path) -> None:
    cfg = config.override(config.Config(), "relays", listen="127.0.0.1:0")
    ident = identity.Identity.generate()
    db = state.open_state(tmp_path / "state.db")
    ctx = AgentContext(tmp_path, cfg, ident, db, EventLog())
    svc = RelaysService(ctx)
    await svc.start()
    assert svc.address is not None
    runner = asyncio.create_task(svc.run())
    e = svc.enroll("shed", f"127.0.0.1:{svc.address[1]}")
    with pytest.raises(RelayError, match="not registered"):
        await svc.allocate(e.relay_id)
    engine = fw_relay.Relay(fw_cfg.parse(json.dumps({"relay_id": e.relay_id, "key": e.key,
                                                     "home": e.home, "port_base": 47310})),
                            Net("127.0.0.1"))  # fmt: skip
    stop = asyncio.Event()

    async def pump() -> None:
        engine.start(0)
        now = 0
        while not stop.is_set():
            engine.step(now)
            engine.pump(now)
            await asyncio.sleep(0.005)
            now += 5

    task = asyncio.create_task(pump())
    try:
        for _ in range(200):
            if svc.relay_offers():
                break
            await asyncio.sleep(0.01)
        alloc = await svc.allocate(e.relay_id)
        assert alloc.ports == (47310, 47311) and alloc.host == "127.0.0.1"
        assert svc.status()["online"] == 1
        assert svc.record_offers() == []  # no transport endpoint: nothing to offer
        svc.free(alloc)
        for _ in range(200):
            if engine.allocations() == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.allocations() == 0
    finally:
        stop.set()
        await task
        engine.stop()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        db.conn.close()


async def test_an_unanswered_allocation_does_not_hold_a_slot(tmp_path: Path) -> None:
    cfg = config.override(config.Config(), "relays", listen="127.0.0.1:0")
    db = state.open_state(tmp_path / "state.db")
    svc = RelaysService(AgentContext(tmp_path, cfg, identity.Identity.generate(), db, EventLog()))
    await svc.start()
    assert svc.address is not None
    e = svc.enroll("loft", f"127.0.0.1:{svc.address[1]}")
    engine = fw_relay.Relay(fw_cfg.parse(json.dumps({"relay_id": e.relay_id, "key": e.key,
                                                     "home": e.home, "port_base": 47320})),
                            Net("127.0.0.1"))  # fmt: skip
    engine.start(0)
    try:
        for now in range(0, 3000, 10):
            engine.step(now)
            engine.pump(now)
            await asyncio.sleep(0.01)
            if engine.state == fw_relay.RUNNING:
                break
        assert svc.status()["online"] == 1
        # The board stops answering (busy, or its Wi-Fi dropped) while the box asks.
        with pytest.raises(RelayError, match="did not answer"):
            await svc.allocate(e.relay_id)
        session = svc.manager.sessions[bytes.fromhex(e.relay_id)]
        assert session.pending == {}
        assert svc.relay_offers()[0]["slots_free"] == fw_relay.MAX_SLOTS
    finally:
        engine.stop()
        if svc._transport is not None:
            svc._transport.close()
        db.conn.close()
