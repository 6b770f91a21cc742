"""A relay (firmware engine, CPython sockets) in the lab between two boxes behind symmetric NATs.

The relay and its home box are public hosts; alice and bob sit behind routers with symmetric
NAT (random port per destination), so they could not punch a hole to each other. Through the
relay, frames flow both ways; the allocation's quota holds; a forged or replayed control
message does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from brelay import relay as fw_relay

from lab import Lab, Nat
from node.relays import _wire as w
from node.relays.manager import AllocEnded
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
