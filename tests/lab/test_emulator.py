"""The link emulator: its packet pipeline on a hand-stepped clock, its spec parser, and the
real process moving packets between two namespaces."""

from __future__ import annotations

import contextlib
import socket
import statistics
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import Lab, LinkSpec
from lab.emulator import Emulator, EmulatorError

SO_RCVBUFFORCE = 33
A, B = 10, 20  # stand-in fds: direction 0 writes to B, direction 1 to A


def drain(emu: Emulator, until: float) -> list[tuple[float, int, bytes]]:
    """Step the clock from deadline to deadline up to ``until``; return (time, fd, packet)."""
    out: list[tuple[float, int, bytes]] = []
    now = 0.0
    while (deadline := emu.next_deadline()) is not None and deadline <= until:
        now = max(now, deadline)
        out += [(now, fd, pkt) for fd, pkt in emu.advance(now)]
    return out


def packets(n: int, size: int = 1000) -> list[bytes]:
    return [i.to_bytes(4, "big") + bytes(size - 4) for i in range(n)]


def test_plain_wire_delivers_at_once_in_both_directions() -> None:
    emu = Emulator(A, B, LinkSpec(), LinkSpec())
    emu.receive(0, b"ab", 1.0)
    emu.receive(1, b"ba", 1.0)
    assert emu.advance(1.0) == [(B, b"ab"), (A, b"ba")]
    assert emu.next_deadline() is None


def test_delay_applies_per_direction() -> None:
    emu = Emulator(A, B, LinkSpec(delay_ms=25), LinkSpec(delay_ms=5))
    emu.receive(0, b"slow", 0.0)
    emu.receive(1, b"fast", 0.0)
    assert emu.advance(0.004) == []
    assert emu.advance(0.005) == [(A, b"fast")]
    assert emu.advance(0.0249) == []
    assert emu.next_deadline() == pytest.approx(0.025)
    assert emu.advance(0.025) == [(B, b"slow")]


def test_rate_spaces_packets_by_their_serialisation_time() -> None:
    # 8 Mbit/s = 1,000,000 bytes/s: a 1000-byte packet every millisecond once the burst is spent.
    emu = Emulator(A, B, LinkSpec(rate_mbit=8, burst_bytes=1000), LinkSpec())
    for p in packets(5):
        emu.receive(0, p, 0.0)
    times = [t for t, _, _ in drain(emu, 1.0)]
    assert times == pytest.approx([0.0, 0.001, 0.002, 0.003, 0.004])


def test_drop_tail_queue_in_packets() -> None:
    emu = Emulator(A, B, LinkSpec(rate_mbit=1, queue_packets=3, burst_bytes=1000), LinkSpec())
    for p in packets(10):
        emu.receive(0, p, 0.0)
    delivered = drain(emu, 10.0)
    # One leaves at once on the bucket's tokens, three wait in the queue, six are dropped.
    assert [int.from_bytes(p[:4], "big") for _, _, p in delivered] == [0, 1, 2, 3]
    assert emu.dirs[0].stats.drop_queue == 6
    assert emu.dirs[0].stats.queue_max_bytes == 3000


def test_drop_tail_queue_in_bytes() -> None:
    emu = Emulator(A, B, LinkSpec(rate_mbit=1, queue_bytes=2500, burst_bytes=1000), LinkSpec())
    for p in packets(10):
        emu.receive(0, p, 0.0)
    assert len(drain(emu, 10.0)) == 3
    assert emu.dirs[0].stats.drop_queue == 7


def test_random_loss_is_near_the_setting_and_counted() -> None:
    emu = Emulator(A, B, LinkSpec(loss=0.1), LinkSpec(), seed=7)
    for p in packets(5000, 100):
        emu.receive(0, p, 0.0)
    delivered = len(emu.advance(0.0))
    assert 4300 < delivered < 4700
    assert emu.dirs[0].stats.drop_loss == 5000 - delivered


def test_duplication() -> None:
    emu = Emulator(A, B, LinkSpec(duplicate=1.0), LinkSpec())
    emu.receive(0, b"x", 0.0)
    assert emu.advance(0.0) == [(B, b"x"), (B, b"x")]
    assert emu.dirs[0].stats.duplicated == 1


def test_jitter_keeps_order_and_reorder_breaks_it() -> None:
    def order(spec: LinkSpec) -> list[int]:
        emu = Emulator(A, B, spec, LinkSpec(), seed=3)
        for i, p in enumerate(packets(200, 100)):
            emu.receive(0, p, i * 0.0005)
        return [int.from_bytes(p[:4], "big") for _, _, p in drain(emu, 10.0)]

    jittered = order(LinkSpec(delay_ms=20, jitter_ms=10))
    assert jittered == list(range(200))
    reordered = order(LinkSpec(delay_ms=20, reorder=0.2, reorder_ms=5))
    assert sorted(reordered) == list(range(200))
    assert reordered != list(range(200))


def test_bdp_queue() -> None:
    spec = LinkSpec.bdp_queue(20, 50)
    assert spec.queue_bytes == 125_000
    assert spec.delay_ms == 25
    assert LinkSpec.bdp_queue(20, 50, bdps=4).queue_bytes == 500_000


def test_spec_parse_short_forms() -> None:
    spec = LinkSpec.parse("rate=20mbit, delay=25ms, jitter=2ms, loss=1%, dup=0.5%, queue=100p")
    assert spec == LinkSpec(
        rate_mbit=20, delay_ms=25, jitter_ms=2, loss=0.01, duplicate=0.005, queue_packets=100
    )
    assert LinkSpec.parse("queue=62500b,reorder=0.1").queue_bytes == 62500
    assert LinkSpec.parse("") == LinkSpec()


@pytest.mark.parametrize(
    "text",
    ["rate", "rate=fast", "loss=150%", "delay=-1ms", "colour=red", "queue=0p", "jitter=5ms"],
)
def test_spec_parse_rejects_bad_input(text: str) -> None:
    with pytest.raises(EmulatorError, match="link spec"):
        LinkSpec.parse(text)


specs = st.builds(
    LinkSpec,
    rate_mbit=st.floats(0, 10_000, allow_nan=False),
    delay_ms=st.floats(0, 5000, allow_nan=False),
    loss=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    reorder=st.floats(0, 1),
    queue_bytes=st.integers(0, 10**9),
    queue_packets=st.integers(1, 10**6),
)


@given(specs)
def test_spec_roundtrips_through_its_command_line_form(spec: LinkSpec) -> None:
    assert LinkSpec.parse(spec.to_arg()) == spec


@given(st.text(max_size=200))
def test_spec_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(EmulatorError):
        LinkSpec.parse(text)


# -- the real process between two namespaces ----------------------------------------------


def udp_pair(lab: Lab, spec: LinkSpec) -> tuple[socket.socket, socket.socket, str]:
    a, b = lab.namespace("a"), lab.namespace("b")
    link = lab.link(a, b, emulate=spec)
    server = b.socket()
    server.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # hold a whole test burst
    server.bind((link.addr_b, 9000))
    client = a.socket()
    return client, server, link.addr_b


def test_live_link_adds_its_delay(lab: Lab) -> None:
    client, server, addr = udp_pair(lab, LinkSpec(delay_ms=20))
    server.settimeout(2)
    client.settimeout(2)
    rtts = []
    for _ in range(8):
        sent = time.monotonic()
        client.sendto(b"ping", (addr, 9000))
        data, peer = server.recvfrom(100)
        server.sendto(data, peer)
        client.recvfrom(100)
        rtts.append((time.monotonic() - sent) * 1000)
    assert min(rtts) >= 40.0  # two one-way delays, never less
    assert statistics.median(rtts) < 40.0 + 100.0


def test_live_link_limits_rate_and_drops_at_the_queue(lab: Lab) -> None:
    client, server, addr = udp_pair(lab, LinkSpec(rate_mbit=4, queue_packets=30))
    link = lab.links[-1]
    payload = bytes(1200)
    began = time.monotonic()
    for _ in range(600):  # 720 kB offered as fast as the sender can: far above 4 Mbit/s
        client.sendto(payload, (addr, 9000))
    server.settimeout(1.0)
    received, last = 0, 0.0
    while True:
        try:
            server.recvfrom(2000)
        except TimeoutError:
            break
        last = time.monotonic()
        received += 1
    stats = link.stats()["ab"]
    assert stats["drop_queue"] > 0
    assert stats["tx_packets"] == received
    assert stats["rx_packets"] == received + stats["drop_queue"]
    # Nothing is delivered before its departure time at 4 Mbit/s (IP+UDP headers: 28 bytes).
    mbit = received * 1228 * 8 / (last - began) / 1e6
    assert 2.0 < mbit < 4.4


def test_live_link_loses_about_the_set_share(lab: Lab) -> None:
    client, server, addr = udp_pair(lab, LinkSpec(loss=0.2))
    link = lab.links[-1]
    for i in range(1000):
        client.sendto(i.to_bytes(4, "big"), (addr, 9000))
    server.settimeout(0.5)
    got = 0
    while True:
        try:
            server.recvfrom(100)
            got += 1
        except TimeoutError:
            break
    assert 700 < got < 900
    assert link.stats()["ab"]["drop_loss"] == 1000 - got


def test_emulator_and_its_devices_go_away_with_the_lab() -> None:
    from tests.lab.conftest import require_lab

    require_lab()
    with Lab() as lab:
        a, b = lab.namespace("a"), lab.namespace("b")
        link = lab.link(a, b, emulate=LinkSpec(delay_ms=1))
        assert link.emulator is not None
        proc = link.emulator.proc
        assert "tun1" in a.ip("link", "show")
    assert proc.poll() is not None
