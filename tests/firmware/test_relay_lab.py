"""A relay (firmware engine, CPython sockets) in the lab between two boxes behind symmetric NATs.

The relay and its home box are public hosts; alice and bob sit behind routers with symmetric
NAT (random port per destination), so they could not punch a hole to each other. Through the
relay, frames flow both ways; the allocation's quota holds; a forged or replayed control
message does nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from brelay import relay as fw_relay

from lab import Lab, Nat
from node.overlay.records import RELAY_MICROPYTHON, relay_kind
from node.relays import _wire as w
from node.relays.http import add_routes
from node.relays.manager import AllocEnded
from node.transport.errors import TransportError
from node.web.app import CTX_KEY
from tests.firmware.boxrig import (
    echo,
    forward_port,
    nat_of,
    overlay_of,
    relay_board,
    relays_of,
    running,
    start_node,
    stop_node,
    until,
)
from tests.firmware.harness import Rig
from tests.lab.conftest import require_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab() as built:
        yield built


def test_relay_between_two_symmetric_nats(lab: Lab, tmp_path: Path) -> None:
    relay_host = lab.public_host("relay")
    home = lab.public_host("home")
    ra = lab.router("a", Nat.SYMMETRIC)
    rb = lab.router("b", Nat.SYMMETRIC)
    alice = ra.host("alice").socket()
    bob = rb.host("bob").socket()
    alice.settimeout(2.0)
    bob.settimeout(2.0)
    rig = Rig(tmp_path, home.addr, relay_host=relay_host.addr,
              relay_ctx=relay_host.entered, box_ctx=home.entered)  # fmt: skip
    rig.extra += [alice, bob]
    try:
        rig.register()
        assert rig.box.manager.sessions[rig.record.relay_id].address[0] == relay_host.addr
        alloc_id, (pa, pb) = rig.allocate(ip_a=ra.wan_addr, ip_b=rb.wan_addr, packet_quota=41)
        bob.sendto(b"bob here", (relay_host.addr, pb))
        assert rig.recv(alice) is None  # alice has not spoken yet: nowhere to send
        for i in range(20):
            frame = bytes([i]) * (100 + i)
            alice.sendto(frame, (relay_host.addr, pa))
            assert rig.recv(bob) == frame
            bob.sendto(frame[::-1], (relay_host.addr, pb))
            assert rig.recv(alice) == frame[::-1]
        # Datagram 41 was the latch from bob plus 40 frames; the next one is over quota.
        alice.sendto(b"one too many", (relay_host.addr, pa))
        assert rig.recv(bob) is None
        rig.settle()
        ended = [e for e in rig.box.events if isinstance(e, AllocEnded)]
        assert [(e.alloc_id, e.reason) for e in ended] == [(alloc_id, w.EndReason.QUOTA)]

        # A recorded ALLOC replayed by the box's own address, and one signed with a wrong key.
        before = rig.relay.rejected
        relay_ctl = rig.box.manager.sessions[rig.record.relay_id].address
        alloc_msg = next(m for m, _ in rig.box.sent if m[3] == w.MsgType.ALLOC)
        rig.box.sock.sendto(alloc_msg, relay_ctl)
        forged = w.encode(b"\x00" * 32, w.MsgType.ALLOC, rig.record.relay_id, 2**63, 5, 0, 0,
                          10**6, 10**4, 60000)  # fmt: skip
        rig.box.sock.sendto(forged, relay_ctl)
        rig.settle()
        assert rig.relay.rejected == before + 2
        assert rig.relay.allocations() == 0
        assert rig.relay.state == fw_relay.RUNNING
    finally:
        rig.close()


async def test_peer_reaches_a_box_behind_symmetric_nat_through_its_board(
    lab: Lab, tmp_path: Path
) -> None:
    """Box and peer each behind a symmetric NAT (no direct path, no hole punching); the box's
    board is a public host. The peer finds the box's record in the DHT, sees the board's
    offer, and its transport session with the box's agent goes through the board."""
    boot_ns, board_ns = lab.public_host("boot"), lab.public_host("board")
    stun_ns = lab.public_host("stun2")
    rh, rp = lab.router("h", Nat.SYMMETRIC), lab.router("p", Nat.SYMMETRIC)
    box_ns, peer_ns = rh.host("box"), rp.host("peer")
    forward_port(rh, box_ns.addr, 7701)
    boot_addr = f"{boot_ns.addr}:7700"
    boot = await start_node(tmp_path / "boot", listen=boot_addr, enter=boot_ns.entered)
    stun2 = await start_node(tmp_path / "stun2", listen=f"{stun_ns.addr}:7700",
                             enter=stun_ns.entered)  # fmt: skip
    box = await start_node(tmp_path / "box", listen=f"{box_ns.addr}:7700", enter=box_ns.entered,
                           relays_listen="0.0.0.0:7701", bootstrap=(boot_addr,),
                           stun=(boot_addr, f"{stun_ns.addr}:7700"),
                           keepalive_ms=1000)  # fmt: skip
    peer = await start_node(tmp_path / "peer", listen=f"{peer_ns.addr}:7700",
                            enter=peer_ns.entered, bootstrap=(boot_addr,))  # fmt: skip
    svc = relays_of(box)
    enrolled = svc.enroll("garden", f"{rh.wan_addr}:7701")
    # STUN on the bootstrap node tells the box its public address: the board then admits
    # only that address on the box's leg of each allocation.
    report = await nat_of(box).check()
    assert report is not None, nat_of(box).last_error
    assert report.nat_class.value == "symmetric"
    assert svc._box_ip(board_ns.addr) == rh.wan_addr
    app = web.Application()
    app[CTX_KEY] = box
    add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with running(box):
            with relay_board(tmp_path, enrolled, board_ns.addr, 7710, popen=board_ns.python):
                await until(svc.record_offers, "an open allocation on the board")
                (entry,) = svc.record_offers()
                assert relay_kind(entry) == (RELAY_MICROPYTHON, f"{board_ns.addr}:7710")
                assert await overlay_of(box).bootstrap() >= 1
                assert await overlay_of(peer).bootstrap() >= 1
                record = await overlay_of(peer).find_node(box.identity.node_id)
                assert record is not None and entry in record.relays
                record.verify(time.time())

                peer_ep = nat_of(peer).endpoint
                assert peer_ep is not None
                with pytest.raises(TransportError):
                    await peer_ep.connect((rh.wan_addr, 7700), timeout=2.0,
                                          peer_public_key=box.identity.public_key)  # fmt: skip
                conn = await nat_of(peer).connect_record(record)
                assert conn.peer_id == box.identity.node_id
                assert conn.remote_address == (board_ns.addr, 7710)
                for size in (10, 1200, 100_000):
                    payload = os.urandom(size)
                    assert await echo(conn, payload) == payload
                box_ep = nat_of(box).endpoint
                assert box_ep is not None
                (seen,) = [c for c in box_ep.connections if c.peer_id == peer.identity.node_id]
                assert seen.remote_address == (board_ns.addr, 7711)
                assert nat_of(box).path_of(seen) == nat_of(peer).path_of(conn) == "relayed"

                await until(lambda: svc.counters["offers_used"] == 1, "offer taken")
                await until(lambda: len(svc.record_offers()) == 1 and entry not in
                            svc.record_offers(), "the next offer")  # fmt: skip
                url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/relays"

                async def forwarded() -> int:
                    async with ClientSession() as http, http.get(url) as r:
                        return int((await r.json())["relays"][0].get("bytes", 0))

                for _ in range(100):
                    if await forwarded() > 200_000:
                        break
                    await asyncio.sleep(0.1)
                assert await forwarded() > 200_000
    finally:
        await runner.cleanup()
        for ctx in (peer, box, boot, stun2):
            await stop_node(ctx)
