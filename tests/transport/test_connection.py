"""Paired endpoint cores on a fake clock over a fake lossy, reordering, duplicating network."""

from __future__ import annotations

import os
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.transport import _wire as wire
from node.transport.connection import K_WINDOW_FLOOR, ConnectionCore, State, Transmit, _covered
from node.transport.demux import EndpointCore
from node.transport.errors import TransportError
from node.transport.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    PathChanged,
    StreamDataReceived,
)
from tests.transport.netsim import FakeNetwork, Link, config, make_endpoint

A = ("198.18.0.1", 4000)
B = ("198.18.0.2", 5000)


def setup(
    link: Link | None = None, seed: int = 1, **cfg: object
) -> tuple[FakeNetwork, EndpointCore, EndpointCore]:
    net = FakeNetwork(seed=seed, link=link or Link())
    a = make_endpoint(1, config=config(**cfg))
    b = make_endpoint(2, config=config(**cfg))
    net.attach(A, a)
    net.attach(B, b)
    return net, a, b


def established(
    net: FakeNetwork, a: EndpointCore, b: EndpointCore, **kw: object
) -> tuple[ConnectionCore, ConnectionCore]:
    c = a.connect(B, net.now, **kw)  # type: ignore[arg-type]
    net.run_until(lambda: c.is_established and any(x.is_established for x in b.live()))
    return c, next(x for x in b.live() if x.is_established)


def transfer(
    net: FakeNetwork,
    sender: ConnectionCore,
    receiver: ConnectionCore,
    ep_s: EndpointCore,
    ep_r: EndpointCore,
    blobs: list[bytes],
    limit: float = 120.0,
) -> list[bytes]:
    sids = []
    for blob in blobs:
        sid = sender.open_stream()
        sender.send_stream(sid, blob, fin=True)
        sids.append(sid)
    ep_s.touch(sender)
    got = {sid: bytearray() for sid in sids}
    done: set[int] = set()

    def pump() -> bool:
        for sid in sids:
            if sid in done:
                continue
            data, eof = receiver.read_stream(sid)
            got[sid] += data
            if eof:
                done.add(sid)
        ep_r.touch(receiver)
        return len(done) == len(sids)

    net.run_until(pump, limit=limit)
    return [bytes(got[s]) for s in sids]


def test_xx_handshake_exact_sizes() -> None:
    net, a, b = setup()
    sizes: list[tuple[int, int]] = []
    orig = net.send

    def spy(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        sizes.append((data[0], len(data)))
        orig(data, src, dst)

    net.send = spy  # type: ignore[method-assign]
    c, s = established(net, a, b)
    handshake_time = net.now
    net.run_for(0.1)
    # INITIAL padded to 1200; HANDSHAKE = 20-byte header + e(32) + s(32+16) + payload(48+16);
    # FINISH = 20 + s(48) + payload(64); then the responder's PING (17 + 1 + 16).
    assert sizes[:4] == [(0x81, 1200), (0x83, 164), (0x84, 132), (0x95 & ~0x10, 34)]
    assert c.peer_public_key == b.public_key
    assert s.peer_public_key == a.public_key
    assert handshake_time == pytest.approx(3 * 0.025, abs=1e-6)  # three one-way trips


def test_ik_handshake_is_one_round_trip() -> None:
    net, a, b = setup()
    c, s = established(net, a, b, peer_public_key=b.public_key)
    assert c.pattern == wire.HandshakePattern.IK
    assert s.peer_public_key == a.public_key
    assert c.state == State.ESTABLISHED


def test_ik_falls_back_to_xx_when_the_responder_key_changed() -> None:
    net, a, b = setup()
    old_key = make_endpoint(9).public_key  # what the initiator remembers of B
    c, s = established(net, a, b, peer_public_key=old_key, accept_key_change=True)
    # one round trip more than IK would take is not needed: B answers the IK message as XX
    assert c.pattern == s.pattern == wire.HandshakePattern.XX
    assert c.peer_public_key == b.public_key and c.changed_peer_key == b.public_key
    assert s.peer_public_key == a.public_key
    assert c.counters["ik_fallback"] == 1 and s.counters["ik_fallback"] == 1
    assert transfer(net, c, s, a, b, [b"after the fallback"]) == [b"after the fallback"]


def test_ik_fallback_to_an_unexpected_key_fails_unless_accepted() -> None:
    net, a, b = setup()
    old_key = make_endpoint(9).public_key
    c = a.connect(B, net.now, peer_public_key=old_key)
    net.run_until(lambda: c.is_closed, limit=5.0)
    net.flush()
    assert c.changed_peer_key == b.public_key  # learned, though not connected
    assert not any(x.is_established for x in b.live())
    reasons = [e.reason for _, _, e in net.events if isinstance(e, ConnectionTerminated)]
    assert any("instead of the expected" in r for r in reasons)


def test_ik_fallback_with_the_same_key_connects() -> None:
    # a responder that cannot decrypt (here: a corrupted IK message body) answers as XX; the
    # key learned is the expected one, so the session is made without accepting a change
    net, a, b = setup()
    c = a.connect(B, net.now, peer_public_key=b.public_key)
    (initial, dst), *_ = c._out
    corrupt = bytearray(initial)
    corrupt[22 + 32 + 5] ^= 0xFF  # message 1 starts at byte 22: past `e`, inside `s`
    c._out[0] = (bytes(corrupt), dst)
    net.run_until(lambda: c.is_established and any(x.is_established for x in b.live()))
    assert c.pattern == wire.HandshakePattern.XX and c.changed_peer_key is None
    assert c.peer_public_key == b.public_key


def test_transfer_over_lossy_reordering_duplicating_network() -> None:
    link = Link(delay=0.02, jitter=0.01, loss=0.05, duplicate=0.03)
    net, a, b = setup(link, seed=7)
    c, s = established(net, a, b)
    blobs = [os.urandom(n) for n in (1, 5000, 60000, 200000)]
    assert transfer(net, c, s, a, b, blobs) == blobs
    assert c.counters["lost"] > 0
    assert s.counters["replayed"] > 0  # duplicates were caught by the replay window


def test_ack_ranges_stay_short_under_random_loss() -> None:
    # Retransmissions take new packet numbers, so every lost packet leaves a hole the
    # receiver's ACKs would carry for good (up to 64 ranges, each ACK costing both sides
    # work per range). Once the sender acknowledged a packet carrying an ACK frame, the
    # ranges below that frame go (RFC 9000 section 13.2.4); a receiver that only sends ACKs
    # makes one of them ack-eliciting about once per round trip so that happens.
    link = Link(delay=0.025, loss=0.03, rate_bps=20e6, queue_bytes=125_000)
    net, a, b = setup(link, seed=5)
    c, s = established(net, a, b)
    blob = os.urandom(1_500_000)
    sid = c.open_stream()
    c.send_stream(sid, blob, fin=True)
    a.touch(c)
    got = bytearray()
    ranges: list[int] = []
    start = net.now

    def pump() -> bool:
        data, eof = s.read_stream(sid)
        got.extend(data)
        b.touch(s)
        if net.now > start + 0.5:  # past slow start's overshoot
            ranges.append(len(s._received))
        return eof

    net.run_until(pump, limit=start + 30)
    assert bytes(got) == blob
    assert c.counters["lost"] > 50
    assert statistics.median(ranges) <= 8  # 3 % of ~2 round trips of packets, not 64
    assert max(ranges[len(ranges) // 2 :]) < 32


@given(
    st.lists(st.integers(0, 3000), max_size=300, unique=True),
    st.lists(st.integers(0, 3000), min_size=1, max_size=128, unique=True),
)
def test_covered_finds_exactly_the_acknowledged_numbers(pns: list[int], bounds: list[int]) -> None:
    pns.sort()
    bounds.sort(reverse=True)
    ranges = tuple((lo, hi) for hi, lo in zip(bounds[::2], bounds[1::2], strict=False))
    expected = [p for p in pns if any(lo <= p <= hi for lo, hi in ranges)]
    assert sorted(_covered(pns, ranges)) == expected


def test_both_directions_and_key_update() -> None:
    net, a, b = setup(key_update_interval=64)
    c, s = established(net, a, b)
    up = [os.urandom(150000)]
    down = [os.urandom(120000)]
    assert transfer(net, c, s, a, b, up) == up
    assert transfer(net, s, c, b, a, down) == down
    assert c.counters["key_updates"] >= 2 and s.counters["key_updates"] >= 2


def test_replayed_packet_is_dropped_and_counted() -> None:
    net, a, b = setup()
    c, s = established(net, a, b)
    captured: list[bytes] = []
    orig = net.send

    def spy(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        if src == A and data[0] & 0x0F == wire.PacketType.DATA:
            captured.append(data)
        orig(data, src, dst)

    net.send = spy  # type: ignore[method-assign]
    sid = c.open_stream()
    c.send_stream(sid, b"once", fin=True)
    a.touch(c)
    net.run_for(1.0)
    assert s.read_stream(sid) == (b"once", True)
    before = s.counters["replayed"]
    for pkt in captured:
        b.receive(pkt, A, net.now)
    assert s.counters["replayed"] == before + len(captured)
    assert not any(isinstance(e, StreamDataReceived) for e in s.events)


def test_tampered_packet_is_dropped_and_counted() -> None:
    net, a, b = setup()
    c, s = established(net, a, b)
    sid = c.open_stream()
    c.send_stream(sid, b"x")
    out = c.datagrams_to_send(net.now)
    pkt = bytearray(out[0][0])
    pkt[-1] ^= 0x40
    b.receive(bytes(pkt), A, net.now)
    assert s.counters["auth_failed"] == 1
    assert b.counters["dropped_unauthenticated"] == 1


def test_responder_never_amplifies_before_validation() -> None:
    net, a, _ = setup()
    net.links[(B, A)] = Link(loss=1.0)  # the initiator never hears back: it keeps retrying
    received = sent = 0
    orig = net.send

    def spy(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        nonlocal received, sent
        if dst == B:
            received += len(data)
        else:
            sent += len(data)
        orig(data, src, dst)

    net.send = spy  # type: ignore[method-assign]
    a.connect(B, net.now)
    net.run_for(8.0)
    assert received >= 3 * 1200
    assert 0 < sent <= received


def test_short_initial_is_ignored() -> None:
    net, a, b = setup()
    c = a.connect(B, net.now)
    pkt = c.datagrams_to_send(net.now)[0][0]
    b.receive(pkt[:1199], A, net.now)
    assert b.counters["initial_too_small"] == 1
    assert not b.connections
    assert b.datagrams_to_send(net.now) == []


def test_retry_cookie_under_handshake_flood() -> None:
    net = FakeNetwork(seed=3)
    a = make_endpoint(1)
    b = make_endpoint(2, retry_threshold=4)
    net.attach(A, a)
    net.attach(B, b)
    # a flood of INITIALs from spoofed sources fills the half-open budget, then gets RETRYs
    for i in range(20):
        spoof = make_endpoint(10 + i % 3)
        conn = spoof.connect(B, net.now)
        pkt = conn.datagrams_to_send(net.now)[0][0]
        b.receive(pkt, (f"203.0.113.{i}", 1000 + i), net.now)
    assert b.half_open() == 4
    assert b.counters["retry_sent"] == 16
    retry_bytes = [d for d, _ in b.datagrams_to_send(net.now) if d[0] == 0x82]
    assert len(retry_bytes) == 16 and all(len(r) == 39 for r in retry_bytes)
    # a real client answers the RETRY with the cookie and gets through
    c = a.connect(B, net.now)
    net.run_until(lambda: c.is_established)
    assert b.counters["retry_sent"] == 17
    # a forged cookie is refused without state
    forged = wire.LongHeader(
        wire.PacketType.INITIAL, 1, bytes(8), os.urandom(8), token=bytes(20), message=bytes(32)
    )
    b.receive(wire.encode_long(forged, pad_to=1200), ("203.0.113.99", 9), net.now)
    assert b.counters["bad_cookie"] == 1


def test_migration_after_nat_rebinding() -> None:
    net, a, b = setup()
    c, s = established(net, a, b)
    a2 = ("198.18.0.1", 4999)
    net.attach(a2, a)  # the client's NAT now maps it to another port
    net.nat[A] = a2
    blobs = [os.urandom(100000)]
    assert transfer(net, c, s, a, b, blobs) == blobs
    assert s.remote_address == a2
    assert any(isinstance(e, PathChanged) and e.address == a2 for _, _, e in net.events)


def test_idle_timeout_and_keepalive() -> None:
    net, a, b = setup(idle_timeout=5.0, keepalive_interval=2.0)
    c, s = established(net, a, b)
    net.run_for(30.0)
    assert c.is_established and s.is_established
    net.links[(A, B)] = Link(loss=1.0)
    net.links[(B, A)] = Link(loss=1.0)
    net.run_for(6.0)
    assert c.is_closed and s.is_closed
    reasons = {e.reason for _, _, e in net.events if isinstance(e, ConnectionTerminated)}
    assert reasons == {"idle timeout"}


def test_stream_limit_and_credit() -> None:
    net, a, b = setup(max_streams=2)
    c, s = established(net, a, b)
    first = [c.open_stream(), c.open_stream()]
    with pytest.raises(TransportError, match="stream limit"):
        c.open_stream()
    for sid in first:
        c.send_stream(sid, b"hi", fin=True)
    a.touch(c)
    net.run_for(0.5)
    for sid in first:
        s.send_stream(sid, b"", fin=True)
    b.touch(s)
    net.run_for(0.5)
    for sid in first:
        assert s.read_stream(sid) == (b"hi", True)
        c.read_stream(sid)
    a.touch(c)
    b.touch(s)
    net.run_for(0.5)
    assert c.can_open_stream()


def test_flow_control_bounds_buffered_bytes() -> None:
    window = 64 * 1024
    net, a, b = setup(stream_window=window, connection_window=4 * window)
    c, s = established(net, a, b)
    sid = c.open_stream()
    blob = os.urandom(10 * window)
    c.send_stream(sid, blob, fin=True)
    a.touch(c)
    net.run_for(2.0)
    rs = s._recv_streams[sid]
    assert rs.buffered() == window  # exactly the advertised window, never more
    assert transfer_rest(net, c, s, a, b, sid) == blob


def transfer_rest(
    net: FakeNetwork,
    c: ConnectionCore,
    s: ConnectionCore,
    a: EndpointCore,
    b: EndpointCore,
    sid: int,
) -> bytes:
    got = bytearray()
    done = False

    def pump() -> bool:
        nonlocal done
        data, eof = s.read_stream(sid)
        got.extend(data)
        b.touch(s)
        done = done or eof
        return done

    net.run_until(pump, limit=net.now + 60)
    return bytes(got)


def test_spurious_timeout_does_not_resend_delivered_data() -> None:
    net, a, b = setup(Link(delay=0.02, rate_bps=20e6))
    c, s = established(net, a, b)
    sid = c.open_stream()
    blob = os.urandom(1_000_000)
    c.send_stream(sid, blob, fin=True)
    a.touch(c)
    net.run_for(0.2)
    # ACKs stall for 2 s (a delay spike on the return path): the sender's RTO fires
    net.links[(B, A)] = Link(delay=2.0, rate_bps=20e6)
    net.run_for(0.8)
    net.links[(B, A)] = Link(delay=0.02, rate_bps=20e6)
    assert transfer_rest(net, c, s, a, b, sid) == blob
    assert c.counters["rto"] >= 1
    stream_bytes_sent = c.counters["bytes_out"]
    # everything resent after the spurious timeout is bounded by what was in flight then
    assert stream_bytes_sent < 1.6 * len(blob)


def test_close_reaches_peer() -> None:
    net, a, b = setup()
    c, s = established(net, a, b)
    c.close(7, "done", now=net.now)
    a.touch(c)
    net.run_for(2.0)
    assert s.state in (State.DRAINING, State.CLOSED)
    evs = [e for _, conn, e in net.events if conn is s and isinstance(e, ConnectionTerminated)]
    assert evs[0].by_peer and evs[0].reason == "done" and evs[0].error_code == 7
    net.run_for(5.0)
    assert not a.connections and not b.connections


def test_handshake_events_once() -> None:
    net, a, b = setup(Link(loss=0.3), seed=11)
    established(net, a, b)
    net.run_for(2.0)
    completions = [e for _, _, e in net.events if isinstance(e, HandshakeCompleted)]
    assert len(completions) == 2


def test_sessions_per_peer_are_limited() -> None:
    net = FakeNetwork(seed=4)
    a = make_endpoint(1)
    b = make_endpoint(2, max_sessions_per_peer=2)
    net.attach(A, a)
    net.attach(B, b)
    conns = [a.connect(B, net.now) for _ in range(3)]
    net.run_for(1.0)
    closed = [e for _, c, e in net.events if isinstance(e, ConnectionTerminated) and c in conns]
    assert len(closed) == 1 and "too many sessions" in closed[0].reason
    assert b.counters["refused_peer_limit"] == 1
    assert sum(1 for c in b.live() if c.is_established) == 2


def test_receive_budget_bounds_buffered_bytes_across_sessions() -> None:
    budget = 3 << 19  # 1.5 MiB for all sessions; each may want a 1 MiB window
    net = FakeNetwork(seed=5, link=Link(delay=0.01))
    server = make_endpoint(2, config=config(connection_window=1 << 20), receive_budget=budget)
    net.attach(B, server)
    senders = []
    blob = os.urandom(2 << 20)
    for i in range(4):
        ep = make_endpoint(10 + i)
        addr = (f"198.18.0.{10 + i}", 4000)
        net.attach(addr, ep)
        conn = ep.connect(B, net.now)
        senders.append((ep, conn))
    net.run_until(lambda: all(c.is_established for _, c in senders))
    for ep, conn in senders:
        sid = conn.open_stream()
        conn.send_stream(sid, blob, fin=True)
        ep.touch(conn)
    net.run_for(3.0)  # nobody reads: every session fills the credit it was given
    accepted = list(server.live())
    buffered = [sum(rs.buffered() for rs in c._recv_streams.values()) for c in accepted]
    assert sum(buffered) <= budget + 4 * K_WINDOW_FLOOR
    assert sum(buffered) >= budget  # the budget is used, not left idle
    assert min(buffered) >= K_WINDOW_FLOOR  # and no session is starved of its floor
    assert server.status()["receive_budget_free"] == 0
    # reading gives the budget back and every transfer completes
    got = {id(c): bytearray() for c in accepted}

    def pump() -> bool:
        done = True
        for c in accepted:
            data, eof = c.read_stream(0)
            got[id(c)] += data
            server.touch(c)
            done = done and eof
        return done

    net.run_until(pump, limit=net.now + 60)
    assert all(bytes(g) == blob for g in got.values())
    for ep, conn in senders:
        conn.close(now=net.now)
        ep.touch(conn)
    net.run_for(5.0)
    assert server.status()["receive_budget_free"] == budget


def test_packets_go_out_as_sealed_and_are_dated_when_they_do() -> None:
    """With an endpoint's transmit, each packet leaves at once and its RTT sample starts
    when it left, not when the batch began (a long batch would read as a queue)."""
    net, a, b = setup()
    c, _ = established(net, a, b)
    sid = c.open_stream()
    c.send_stream(sid, os.urandom(40_000))
    # a datagram queued before (as the handshake's last message is) must leave first:
    # data sealed with the new keys would otherwise overtake it
    c._queue_raw(b"queued first", B)
    sent: list[bytes] = []
    ticks: list[float] = []

    def clock() -> float:
        ticks.append(net.now + 0.001 * len(ticks))
        return ticks[-1]

    left = c.datagrams_to_send(net.now, Transmit(lambda data, addr: sent.append(data), clock))
    assert left == []
    assert sent.pop(0) == b"queued first"
    assert len(sent) == len(ticks) >= 5
    times = [p.sent_time for p in c._sent.values()][-len(sent) :]
    assert times == ticks
    assert times[-1] - times[0] == pytest.approx(0.001 * (len(sent) - 1))


@pytest.mark.parametrize("mtu", [None, 1400])
def test_path_mtu_probe_raises_the_datagram_size_only_where_it_fits(mtu: int | None) -> None:
    net, a, b = setup(Link(mtu=mtu))
    c, s = established(net, a, b)
    blob = os.urandom(300_000)
    assert transfer(net, c, s, a, b, [blob]) == [blob]
    sizes = net.sizes
    if mtu is None:
        assert c.max_datagram_size == 1452 and c.counters["pmtu"] == 1452
        assert max(sizes) == 1452
    else:
        # the probe is lost each time; it is no congestion signal and nothing is resent
        assert c.max_datagram_size == 1350
        assert c.counters["pmtu_probes_lost"] >= 1
        assert c.cc.congestion_events == 0
        assert max(s for s in sizes if s != 1452) <= 1350


def test_a_path_that_stops_carrying_the_probed_size_falls_back() -> None:
    net, a, b = setup()
    c, s = established(net, a, b)
    first = os.urandom(100_000)
    assert transfer(net, c, s, a, b, [first]) == [first]
    assert c.max_datagram_size == 1452
    for link in [net.default, *net.links.values()]:
        link.mtu = 1400  # the route changed; packets of 1,452 bytes now vanish
    second = os.urandom(100_000)
    assert transfer(net, c, s, a, b, [second]) == [second]
    assert c.max_datagram_size == 1350
    assert c.counters["pmtu_black_holes"] == 1
