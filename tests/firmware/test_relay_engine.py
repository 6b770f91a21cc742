"""The firmware's relay engine on real UDP sockets against the box's real relay manager."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from brelay import relay as fw_relay

from node.relays import _wire as w
from node.relays.manager import AllocEnded, AllocRefused
from tests.firmware.harness import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_registers_and_heartbeats_report_heap(rig: Rig) -> None:
    rig.register()
    session = rig.box.manager.sessions[rig.record.relay_id]
    assert session.free_heap == 50000 and session.slots == fw_relay.MAX_SLOTS
    rig.heap = 41000
    rig.advance(15000)
    assert session.free_heap == 41000
    health = rig.box.manager.health(rig.box.wall)
    assert health[0]["online"] is True and health[0]["free_heap"] == 41000
    offers = rig.box.manager.offers(rig.box.wall)
    assert offers == [{"relay_id": rig.record.relay_id.hex(), "host": "127.0.0.1",
                       "address": f"127.0.0.1:{rig.base}",
                       "port_base": rig.base, "slots_free": 4}]  # fmt: skip


def test_registration_backs_off_while_the_box_is_away(rig: Rig) -> None:
    rig.box.sock.close()
    rig.relay.start(rig.now)
    sent = []
    for _ in range(40):
        before = rig.relay.registrations
        rig.relay.step(rig.now)
        if rig.relay.registrations != before:
            sent.append(rig.now)
        rig.now += 250
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) >= 3 and gaps == sorted(gaps) and gaps[0] >= 1000 and gaps[-1] > gaps[0]


def test_frames_flow_both_ways_unchanged(rig: Rig) -> None:
    rig.register()
    _, (pa, pb) = rig.allocate()
    a, b = rig.peer(), rig.peer()
    b.sendto(b"b-first", ("127.0.0.1", pb))  # latches leg B; A unknown yet: dropped
    assert rig.recv(a) is None
    payloads = [bytes([i]) * (1 + i * 37) for i in range(20)]
    for p in payloads:
        a.sendto(p, ("127.0.0.1", pa))
        assert rig.recv(b) == p
        b.sendto(p[::-1], ("127.0.0.1", pb))
        assert rig.recv(a) == p[::-1]
    rig.advance(15000)
    s = rig.box.manager.sessions[rig.record.relay_id]
    assert s.packets == 40 and s.bytes == 2 * sum(map(len, payloads))


def test_packet_quota_ends_the_allocation(rig: Rig) -> None:
    rig.register()
    alloc_id, (pa, pb) = rig.allocate(packet_quota=4)
    a, b = rig.peer(), rig.peer()
    b.sendto(b"x", ("127.0.0.1", pb))
    rig.recv(a)
    a.sendto(b"1", ("127.0.0.1", pa))
    assert rig.recv(b) == b"1"
    a.sendto(b"2", ("127.0.0.1", pa))
    assert rig.recv(b) == b"2"
    a.sendto(b"3", ("127.0.0.1", pa))
    assert rig.recv(b) == b"3"
    a.sendto(b"4", ("127.0.0.1", pa))  # the fifth datagram on the allocation: over quota
    assert rig.recv(b) is None
    rig.settle()
    ended = [e for e in rig.box.events if isinstance(e, AllocEnded)]
    assert [(e.alloc_id, e.reason, e.packets) for e in ended] == [(alloc_id, w.EndReason.QUOTA, 3)]
    assert rig.relay.allocations() == 0


def test_byte_quota_and_idle_expiry(rig: Rig) -> None:
    rig.register()
    first, (pa, pb) = rig.allocate(byte_quota=1500)
    a, b = rig.peer(), rig.peer()
    b.sendto(b"", ("127.0.0.1", pb))
    rig.recv(a)
    a.sendto(b"z" * 1000, ("127.0.0.1", pa))
    assert rig.recv(b) == b"z" * 1000
    a.sendto(b"z" * 1000, ("127.0.0.1", pa))
    assert rig.recv(b) is None
    second, _ = rig.allocate(idle_ms=2000)
    rig.advance(1500)
    assert rig.relay.allocations() == 1
    rig.advance(1000)
    assert rig.relay.allocations() == 0
    reasons = {e.alloc_id: e.reason for e in rig.box.events if isinstance(e, AllocEnded)}
    assert reasons == {first: w.EndReason.QUOTA, second: w.EndReason.IDLE}


def test_peer_permission_by_address(rig: Rig) -> None:
    rig.register()
    _, (pa, pb) = rig.allocate(ip_a="127.0.0.2")
    a, b = rig.peer(), rig.peer()
    b.sendto(b"b", ("127.0.0.1", pb))
    rig.recv(a)
    a.sendto(b"not allowed", ("127.0.0.1", pa))
    assert rig.recv(b) is None
    assert rig.relay.drops >= 1


def test_slots_run_out_and_bad_allocations_are_refused(rig: Rig) -> None:
    rig.register()
    for _ in range(fw_relay.MAX_SLOTS):
        rig.allocate()
    full, _ = rig.allocate()
    bad, _ = rig.allocate(idle_ms=10)
    refused = {e.alloc_id: e.code for e in rig.box.events if isinstance(e, AllocRefused)}
    assert refused == {full: w.AllocError.FULL, bad: w.AllocError.BAD}
    assert rig.box.manager.offers(rig.box.wall) == []


def test_forged_and_replayed_control_messages_are_rejected(rig: Rig) -> None:
    rig.register()
    alloc_id, _ = rig.allocate()
    alloc_msg = next(m for m, _ in rig.box.sent if m[3] == w.MsgType.ALLOC)
    free = rig.box.manager.free(rig.record.relay_id, alloc_id, rig.box.wall)
    rig.box.send(free)
    rig.settle()
    assert rig.relay.allocations() == 0
    before = rig.relay.rejected
    relay_addr = rig.box.manager.sessions[rig.record.relay_id].address
    rig.box.sock.sendto(alloc_msg, relay_addr)  # replay: would re-open the allocation
    forged = w.encode(b"k" * 32, w.MsgType.ALLOC, rig.record.relay_id, 2**62, 7, 0, 0, 1000, 10,
                      5000)  # fmt: skip
    rig.box.sock.sendto(forged, relay_addr)
    rig.settle()
    assert rig.relay.allocations() == 0
    assert rig.relay.rejected == before + 2
    # And the box side: a replayed HELLO or heartbeat does nothing.
    box_rejected = rig.box.manager.rejected
    hello = rig.box.manager.sessions[rig.record.relay_id]
    for m in [m for m, _ in rig.box.sent if m[3] == w.MsgType.WELCOME]:
        rig.box.manager.receive(m, relay_addr, rig.box.wall)
    assert rig.box.manager.rejected > box_rejected
    assert rig.box.manager.sessions[rig.record.relay_id] is hello


def test_survives_a_box_restart(rig: Rig) -> None:
    rig.register()
    regs = rig.relay.registrations
    rig.box.restart()
    for _ in range(6):
        rig.advance(15000)
    assert rig.relay.registrations > regs
    assert rig.relay.state == fw_relay.RUNNING
    assert rig.record.relay_id in rig.box.manager.sessions


def test_allocations_end_when_the_box_forgot_them(rig: Rig) -> None:
    rig.register()
    rig.allocate(idle_ms=600000)
    assert rig.relay.allocations() == 1
    rig.box.restart()
    for _ in range(6):
        rig.advance(15000)
    assert rig.relay.state == fw_relay.RUNNING and rig.relay.allocations() == 0
    session = rig.box.manager.sessions[rig.record.relay_id]
    assert session.active == {} and len(rig.box.manager.offers(rig.box.wall)) == 1
    ended = [e for e in rig.box.events if isinstance(e, AllocEnded)]
    assert [e.reason for e in ended] == [w.EndReason.RESET]


def test_wifi_loss_closes_sockets_and_reregisters(rig: Rig) -> None:
    rig.register()
    rig.allocate()
    rig.relay.stop()
    assert rig.relay.state == fw_relay.OFFLINE and rig.relay.allocations() == 0
    rig.relay.start(rig.now)
    rig.relay.step(rig.now)
    rig.settle()
    assert rig.relay.state == fw_relay.RUNNING


def test_old_hello_after_box_restart_is_a_replay(rig: Rig) -> None:
    rig.register()
    hello_msgs = []
    orig = rig.relay.ctl.write

    def spy(buf: bytes, n: int) -> int:
        hello_msgs.append(bytes(buf[:n]))
        return orig(buf, n)

    rig.relay.ctl.write = spy
    rig.relay.state = fw_relay.REGISTERING
    rig.relay.next_ms = rig.now
    rig.settle()
    rig.box.restart()
    hello = next(m for m in hello_msgs if m[3] == w.MsgType.HELLO)
    rejected = rig.box.manager.rejected
    assert rig.box.manager.receive(hello, ("127.0.0.1", 1), rig.box.wall) == []
    assert rig.box.manager.rejected == rejected + 1


def test_bridge_frames_reach_the_box_and_back(rig: Rig) -> None:
    got: list[bytes] = []
    rig.relay.bridge = lambda payload: got.append(bytes(payload))
    assert not rig.relay.send_bridge(b"early")
    rig.register()
    assert rig.relay.send_bridge(b"from ble peer")
    rig.settle()
    frames = [e for e in rig.box.events if type(e).__name__ == "BridgeFrame"]
    assert [f.payload for f in frames] == [b"from ble peer"]  # type: ignore[attr-defined]
    rig.box.send(rig.box.manager.bridge(rig.record.relay_id, b"to ble peer", rig.box.wall))
    rig.settle()
    assert got == [b"to ble peer"]


def test_box_messages_cannot_be_replayed_after_a_restart_with_the_clock_back(rig: Rig) -> None:
    # A Pi has no RTC: after a restart its clock may be behind what it was. Whatever the box
    # sent before must stay below the floor the relay takes from the next WELCOME.
    rig.register()
    alloc_id, _ = rig.allocate()
    rig.box.send(rig.box.manager.free(rig.record.relay_id, alloc_id, rig.box.wall))
    rig.advance(15000)
    assert rig.relay.allocations() == 0
    old = [m for m, _ in rig.box.sent if m[3] in (w.MsgType.ALLOC, w.MsgType.HEARTBEAT_ACK)]
    assert len(old) >= 2
    rig.box.restart()
    rig.box.wall -= 3600
    regs = rig.relay.registrations
    for _ in range(5):
        rig.advance(15000)
    assert rig.relay.registrations > regs and rig.relay.state == fw_relay.RUNNING
    before = rig.relay.rejected
    relay_addr = rig.box.manager.sessions[rig.record.relay_id].address
    for m in old:
        rig.box.sock.sendto(m, relay_addr)
    rig.settle()
    assert rig.relay.rejected == before + len(old)
    assert rig.relay.allocations() == 0
    # The restarted box itself is heard: its counters went on growing.
    rig.allocate()
    assert rig.relay.allocations() == 1
