"""Relayed sessions through a MicroPython relay, on loopback: the box's relays service keeps an
open allocation on its enrolled board, lists it in its node record, and a peer's transport
session through it reaches the box's agent; then bridge frames reach a local consumer."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from node import config
from node.agent import AgentContext
from node.overlay.records import RELAY_MICROPYTHON, relay_kind, sign_record
from node.relays import service as relays_service
from node.relays.http import add_routes
from node.relays.service import Enrollment, RelaysService
from node.transport.endpoint import Endpoint
from node.web.app import CTX_KEY
from tests.firmware.boxrig import (
    echo,
    nat_of,
    overlay_of,
    relay_board,
    relays_of,
    running,
    start_node,
    stop_node,
    until,
)
from tests.firmware.harness import free_port_base


async def _box_and_peer(
    tmp: Path, **relay_cfg: Any
) -> tuple[AgentContext, RelaysService, Enrollment, AgentContext, int]:
    box = await start_node(tmp / "box", relays_listen="127.0.0.1:0", keepalive_ms=1000,
                           **relay_cfg)  # fmt: skip
    svc = relays_of(box)
    assert svc.address is not None
    enrolled = svc.enroll("porch", f"127.0.0.1:{svc.address[1]}")
    return box, svc, enrolled, await start_node(tmp / "peer"), free_port_base()


async def test_a_peer_reaches_the_box_through_its_relay_board(tmp_path: Path) -> None:
    box, svc, enrolled, peer, base = await _box_and_peer(tmp_path, idle_ms=2000)
    try:
        async with running(box):
            with relay_board(tmp_path, enrolled, "127.0.0.1", base):
                await until(svc.record_offers, "an open allocation on the board")
                (entry,) = svc.record_offers()
                assert relay_kind(entry) == (RELAY_MICROPYTHON, f"127.0.0.1:{base}")
                assert entry in nat_of(box).relay_addresses()
                assert entry in overlay_of(box).make_record().relays

                # The record says the box cannot be dialled and lists only the board.
                record = sign_record(box.identity, addresses=(), nat_class="symmetric",
                                     relays=(entry,), seq=1, expires=2_000_000_000)  # fmt: skip
                conn = await nat_of(peer).connect_record(record)
                assert conn.peer_id == box.identity.node_id
                assert conn.remote_address == ("127.0.0.1", base)
                payload = bytes(range(256)) * 200
                assert await echo(conn, payload) == payload

                # The box saw the session arrive from the board's leg and offers a new slot.
                await until(lambda: svc.counters["offers_used"] == 1, "offer taken")
                await until(lambda: svc.record_offers() not in ([], [entry]), "a new offer")
                used = [o for o in svc.offers.values() if o.peer is not None]
                assert [o.peer for o in used] == [peer.identity.node_id]
                # Heartbeats bring the board's forwarded bytes to the dashboard.
                await until(lambda: svc.relays()[0].get("bytes", 0) > 2 * len(payload),
                            "forwarded bytes in relay health")  # fmt: skip

                # An idle session outlives the relay's idle expiry only if it speaks: this one
                # is silent for longer than idle_ms, so the board ends the allocation.
                await until(lambda: svc.ended["idle"] >= 1, "idle expiry", timeout=20)
                await until(lambda: not any(o.peer for o in svc.offers.values()), "offer gone")
    finally:
        await stop_node(peer)
        await stop_node(box)


async def test_quota_cuts_a_relayed_session(tmp_path: Path) -> None:
    box, svc, enrolled, peer, base = await _box_and_peer(tmp_path, byte_quota=64 * 1024)
    try:
        async with running(box):
            with relay_board(tmp_path, enrolled, "127.0.0.1", base):
                await until(svc.record_offers, "an open allocation on the board")
                _, where = relay_kind(svc.record_offers()[0])
                host, port = where.rsplit(":", 1)
                ep = nat_of(peer).endpoint
                assert isinstance(ep, Endpoint)
                conn = await ep.connect((host, int(port)), peer_public_key=box.identity.public_key)
                assert await echo(conn, b"x" * 8000) == b"x" * 8000
                try:
                    await echo(conn, b"y" * 200_000, timeout=5)
                    raise AssertionError("200 kB went through a 64 KiB allocation")
                except TimeoutError:
                    pass
                await until(lambda: svc.ended["quota"] == 1, "quota end reported")
                used = [o for o in svc.offers.values() if o.peer is not None]
                assert used == []
                # The box ends the session too: it cannot go on through the next allocation.
                box_ep = nat_of(box).endpoint
                assert box_ep is not None
                peer_id = peer.identity.node_id
                await until(lambda: all(c.peer_id != peer_id for c in box_ep.connections),
                            "session closed")  # fmt: skip
                await asyncio.sleep(2)
                assert svc.ended["quota"] == 1  # and no later allocation was used up by it
    finally:
        await stop_node(peer)
        await stop_node(box)


async def test_unused_offers_rotate_and_vanish_with_their_board(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relays_service, "OFFER_ROTATE_S", 1.5)
    box, svc, enrolled, peer, base = await _box_and_peer(tmp_path)
    refreshed: list[int] = []
    monkeypatch.setattr(overlay_of(box), "refresh_record", lambda: refreshed.append(1))
    try:
        async with running(box):
            with relay_board(tmp_path, enrolled, "127.0.0.1", base):
                await until(svc.record_offers, "an open allocation on the board")
                first = svc.record_offers()
                await until(lambda: svc.record_offers() not in ([], first), "a fresh offer")
                await until(lambda: svc.ended["freed"] >= 1, "the old offer freed")
                assert len(refreshed) >= 2
            # The board is gone: after three keepalives it is offline and so are its offers.
            await until(lambda: svc.status()["online"] == 0, "board offline", timeout=10)
            await svc.maintain_offers()
            assert svc.record_offers() == [] and svc.offers == {}
    finally:
        await stop_node(peer)
        await stop_node(box)


async def test_bridge_frames_reach_a_local_consumer(tmp_path: Path) -> None:
    from brelay import cfg as fw_cfg
    from brelay import relay as fw_relay
    from brelay.net import Net

    box = await start_node(tmp_path / "box", relays_listen="127.0.0.1:0", keepalive_ms=1000)
    svc = relays_of(box)
    assert svc.address is not None
    (box.data_dir / "admin.token").write_text("secret-token\n")
    e = svc.enroll("hall", f"127.0.0.1:{svc.address[1]}")
    to_ble: list[bytes] = []
    engine = fw_relay.Relay(
        fw_cfg.parse(f'{{"relay_id": "{e.relay_id}", "key": "{e.key}", "home": "{e.home}", '
                     f'"port_base": {free_port_base()}}}'),
        Net("127.0.0.1"), bridge=lambda p: to_ble.append(bytes(p)),
    )  # fmt: skip
    stop = asyncio.Event()

    async def pump() -> None:
        from brelay import ticks

        engine.start(ticks.ms())
        while not stop.is_set():
            engine.step(ticks.ms())
            engine.pump(ticks.ms())
            await asyncio.sleep(0.005)

    app = web.Application()
    app[CTX_KEY] = box
    add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/relays/bridge"
    auth = {"Authorization": "Bearer secret-token"}
    task = asyncio.create_task(pump())
    try:
        await until(lambda: engine.state == fw_relay.RUNNING, "registration")
        async with ClientSession() as http:
            async with http.get(url) as r:
                assert r.status == 401
            waiting = asyncio.create_task(http.get(url + "?wait=10", headers=auth))
            await asyncio.sleep(0.2)
            assert engine.send_bridge(b"\x01sealed frame from a phone")
            async with await waiting as r:
                frames = (await r.json())["frames"]
            assert [(f["relay_id"], base64.b64decode(f["data"])) for f in frames] == [
                (e.relay_id, b"\x01sealed frame from a phone")
            ]
            body = {"relay_id": e.relay_id, "data": base64.b64encode(b"\x02reply").decode()}
            async with http.post(url, json=body, headers=auth) as r:
                assert r.status == 200 and (await r.json()) == {"sent": 6}
            await until(lambda: to_ble == [b"\x02reply"], "frame at the BLE side")
            for bad in ({"relay_id": e.relay_id, "data": "!!"}, {"relay_id": "zz", "data": ""},
                        ["x"], {"relay_id": e.relay_id, "data": base64.b64encode(
                            bytes(2000)).decode()}):  # fmt: skip
                async with http.post(url, json=bad, headers=auth) as r:
                    assert r.status == 400, bad
            async with http.get(url + "?wait=99", headers=auth) as r:
                assert r.status == 400
        assert svc.status()["bridge_in"] == 1 and svc.status()["bridge_out"] == 1
    finally:
        stop.set()
        await task
        engine.stop()
        await runner.cleanup()
        await stop_node(box)


async def test_offers_name_the_advertised_host(tmp_path: Path) -> None:
    """Boards on the box's LAN with their ports forwarded on the router: the record lists the
    router's public address (``[relays] advertise_host``), not the LAN address."""
    with pytest.raises(config.ConfigError, match="advertise_host: expected a host name"):
        config.from_dict({"relays": {"advertise_host": "203.0.113.7:7702"}})
    box, svc, enrolled, peer, base = await _box_and_peer(tmp_path, advertise_host="203.0.113.7")
    try:
        async with running(box):
            with relay_board(tmp_path, enrolled, "127.0.0.1", base):
                await until(svc.record_offers, "an open allocation on the board")
                (entry,) = svc.record_offers()
                assert relay_kind(entry) == (RELAY_MICROPYTHON, f"203.0.113.7:{base}")
                assert entry in overlay_of(box).make_record().relays
                (offer,) = svc.status()["offers"]
                assert offer["address"] == f"203.0.113.7:{base}"
    finally:
        await stop_node(peer)
        await stop_node(box)
