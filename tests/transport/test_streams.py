"""Stream credit: MAX_STREAMS returned as streams are fully closed and consumed (RFC 9000 4.6).

Every way a stream can end is exercised many times over one connection, in both directions,
so a single leaked stream per pattern would exhaust the 128-stream credit.
"""

from __future__ import annotations

import itertools

from node.transport.connection import ConnectionCore
from node.transport.demux import EndpointCore
from tests.transport.netsim import FakeNetwork, Link, config, make_endpoint

A = ("198.18.0.1", 4000)
B = ("198.18.0.2", 5000)
PATTERNS = ("both_fin", "opener_stops", "opener_resets", "acceptor_stops", "acceptor_resets")


def pair(max_streams: int = 128) -> tuple[FakeNetwork, ConnectionCore, ConnectionCore]:
    net = FakeNetwork(seed=3, link=Link(delay=0.002))
    a = make_endpoint(1, config=config(max_streams=max_streams))
    b = make_endpoint(2, config=config(max_streams=max_streams))
    net.attach(A, a)
    net.attach(B, b)
    c = a.connect(B, net.now)
    net.run_until(lambda: c.is_established and any(x.is_established for x in b.live()))
    s = next(x for x in b.live() if x.is_established)
    return net, c, s


def touch_all(net: FakeNetwork) -> None:
    for ep in net.endpoints.values():
        for conn in ep.live():
            ep.touch(conn)


def endpoint_of(net: FakeNetwork, conn: ConnectionCore) -> EndpointCore:
    return next(ep for ep in net.endpoints.values() if conn in ep.live())


def read_all(conn: ConnectionCore, sid: int, got: bytearray) -> bool:
    data, eof = conn.read_stream(sid)
    got += data
    return eof


def close_like_an_application(conn: ConnectionCore, sid: int) -> None:
    """What the asyncio Stream.close() does: FIN unless already reset, stop reading."""
    s = conn._send_streams.get(sid)
    if s is not None and not s.reset and s.fin_offset is None:
        conn.send_stream(sid, b"", fin=True)
    conn.stop_stream(sid)


def exchange(net: FakeNetwork, opener: ConnectionCore, acceptor: ConnectionCore, how: str) -> None:
    """One request/answer on a new stream, ended as ``how`` says."""
    net.run_until(opener.can_open_stream, limit=net.now + 5)
    sid = opener.open_stream()
    opener.send_stream(sid, b"request", fin=how != "opener_resets")
    touch_all(net)
    net.run_until(lambda: acceptor.stream_readable(sid) >= 7, limit=net.now + 5)
    if how == "acceptor_stops":
        # the acceptor answers without reading the request to its end, then closes
        acceptor.send_stream(sid, b"answer", fin=True)
        close_like_an_application(acceptor, sid)
    elif how == "acceptor_resets":
        acceptor.reset_stream(sid, 9)
        acceptor.stop_stream(sid, 9)
    else:
        got = bytearray()
        net.run_until(
            lambda: read_all(acceptor, sid, got) or how == "opener_resets", limit=net.now + 5
        )
        assert bytes(got).startswith(b"request")
        acceptor.send_stream(sid, b"answer", fin=how == "both_fin")
    touch_all(net)
    if how == "acceptor_resets":
        net.run_until(lambda: opener.read_stream(sid)[1], limit=net.now + 5)
        close_like_an_application(opener, sid)
    else:
        net.run_until(lambda: opener.stream_readable(sid) >= 6, limit=net.now + 5)
        answer, eof = opener.read_stream(sid, 6)
        assert answer == b"answer"
        if how == "both_fin" and not eof:
            net.run_until(lambda: opener.read_stream(sid)[1], limit=net.now + 5)
        elif how == "opener_resets":
            opener.reset_stream(sid, 7)
            opener.stop_stream(sid, 7)
        else:
            close_like_an_application(opener, sid)
        if how in ("opener_stops", "opener_resets"):
            # the acceptor's application closes its side afterwards
            touch_all(net)
            net.run_for(0.01)
            close_like_an_application(acceptor, sid)
    touch_all(net)


def assert_all_forgotten(net: FakeNetwork, *conns: ConnectionCore) -> None:
    touch_all(net)
    net.run_for(1.0)
    for conn in conns:
        assert conn._send_streams == {} and conn._recv_streams == {}, conn.status()


def test_a_thousand_sequential_streams_both_directions() -> None:
    net, c, s = pair()
    for i, how in zip(range(1000), itertools.cycle(PATTERNS), strict=False):
        opener, acceptor = (c, s) if i % 2 == 0 else (s, c)
        exchange(net, opener, acceptor, how)
    assert_all_forgotten(net, c, s)
    # each side opened 500 streams under a limit of 128 open at once
    assert c._next_local_stream >> 1 == 500 and s._next_local_stream >> 1 == 500
    assert c._peer_max_streams >= 500 and s._peer_max_streams >= 500


def test_many_concurrent_streams_wait_for_credit() -> None:
    net, c, s = pair(max_streams=32)
    want = 300  # per direction, nearly ten times the credit
    opened: dict[ConnectionCore, list[int]] = {c: [], s: []}
    answered: dict[ConnectionCore, set[int]] = {c: set(), s: set()}
    done: dict[ConnectionCore, set[int]] = {c: set(), s: set()}
    requests: dict[tuple[int, int], bytearray] = {}
    answers: dict[tuple[int, int], bytearray] = {}
    peer = {c: s, s: c}

    def pump() -> bool:
        for conn in (c, s):
            while len(opened[conn]) < want and conn.can_open_stream():
                sid = conn.open_stream()
                conn.send_stream(sid, sid.to_bytes(4, "big") * 100, fin=True)
                opened[conn].append(sid)
            other = peer[conn]
            # serve the streams the peer opened: read the request to its end, answer, FIN;
            # every third one is answered and closed before the request is read in full
            for sid in opened[other]:
                if sid in answered[other]:
                    continue
                got = requests.setdefault((id(conn), sid), bytearray())
                if (sid >> 1) % 3 == 0 and conn.stream_readable(sid):
                    conn.send_stream(sid, b"ok", fin=True)
                    close_like_an_application(conn, sid)
                    answered[other].add(sid)
                elif read_all(conn, sid, got):
                    assert bytes(got) == sid.to_bytes(4, "big") * 100
                    conn.send_stream(sid, b"ok", fin=True)
                    answered[other].add(sid)
            # read the answers; every fifth stream is closed once "ok" is in, before its EOF
            for sid in opened[conn]:
                if sid in done[conn] or sid not in answered[conn]:
                    continue
                got = answers.setdefault((id(conn), sid), bytearray())
                if read_all(conn, sid, got):
                    assert got == b"ok"
                    done[conn].add(sid)
                elif (sid >> 1) % 5 == 0 and got == b"ok":
                    close_like_an_application(conn, sid)
                    done[conn].add(sid)
        touch_all(net)
        return all(len(done[x]) == want for x in (c, s))

    net.run_until(pump, limit=120.0)
    assert_all_forgotten(net, c, s)
    assert max(len(x._send_streams) for x in (c, s)) == 0
