"""The control protocol: firmware and box encode the same bytes, reject forgeries and replays."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.relays import _wire as host
from tests.firmware.fakes import install_micropython

install_micropython()
from brelay import wire as fw  # noqa: E402
from brelay.hmac import Hmac, equal, hmac_sha256  # noqa: E402

KEY = bytes(range(32))
RID = bytes.fromhex("0102030405060708")

# RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
RFC4231_2 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_hmac_matches_rfc_4231() -> None:
    assert hmac_sha256(b"Jefe", b"what do ya ", b"want for nothing?").hex() == RFC4231_2
    long_key = b"\xaa" * 131  # RFC 4231 test case 6: a key longer than the block
    msg = b"Test Using Larger Than Block-Size Key - Hash Key First"
    assert hmac_sha256(long_key, msg).hex() == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    )
    assert equal(b"abc", b"abc") and not equal(b"abc", b"abd") and not equal(b"a", b"ab")


SAMPLES = [
    (host.MsgType.HELLO, (b"c" * 8, 1, 100000, 7710, 4)),
    (host.MsgType.WELCOME, (b"c" * 8, 15000)),
    (host.MsgType.HEARTBEAT, (1, 2, 3, 4, 5, 6)),
    (host.MsgType.HEARTBEAT_ACK, ()),
    (host.MsgType.ALLOC, (9, 0x0A000001, 0, 1 << 20, 1000, 60000)),
    (host.MsgType.ALLOC_OK, (9, 7710, 7711)),
    (host.MsgType.ALLOC_ERR, (9, 1)),
    (host.MsgType.FREE, (9,)),
    (host.MsgType.ALLOC_END, (9, 3, 10, 1000)),
    (host.MsgType.BRIDGE, (b"\x00opaque\xff",)),
]


@pytest.mark.parametrize(("typ", "fields"), SAMPLES, ids=[t.name for t, _ in SAMPLES])
def test_both_sides_encode_the_same_bytes(typ: host.MsgType, fields: tuple[object, ...]) -> None:
    a = host.encode(KEY, typ, RID, 77, *fields)
    b = fw.pack(Hmac(KEY), int(typ), RID, 77, *fields)
    assert a == b
    t, rid, counter, got = fw.decode(Hmac(KEY), a, RID)
    assert (t, rid, counter) == (typ, RID, 77)
    assert tuple(got) == fields if typ != host.MsgType.BRIDGE else got == fields[0]
    assert host.decode(KEY, b)[3] == fields


def test_forged_and_tampered_messages_are_rejected() -> None:
    msg = host.encode(KEY, host.MsgType.FREE, RID, 5, 1)
    with pytest.raises(fw.WireError, match="bad tag"):
        fw.decode(Hmac(b"x" * 32), msg)
    for i in range(len(msg)):
        bad = bytearray(msg)
        bad[i] ^= 1
        with pytest.raises(fw.WireError):
            fw.decode(Hmac(KEY), bytes(bad), RID)
        with pytest.raises(host.WireError):
            host.decode(KEY, bytes(bad))


@pytest.mark.parametrize("impl", ["host", "firmware"])
def test_replay_window(impl: str) -> None:
    w = host.Window(100) if impl == "host" else fw.Window(100)
    assert not w.accept(100) and not w.accept(50)
    assert w.accept(101) and not w.accept(101)
    assert w.accept(110) and w.accept(105) and not w.accept(105)
    assert w.accept(300) and not w.accept(300 - 64) and w.accept(300 - 63)


@settings(deadline=None)
@given(st.binary(max_size=1400))
def test_decoders_never_crash_on_junk(data: bytes) -> None:
    with pytest.raises(fw.WireError):
        fw.decode(Hmac(KEY), data)
    with pytest.raises(host.WireError):
        host.decode(KEY, data)


@settings(deadline=None)
@given(
    st.sampled_from([t for t in host.MsgType if t != host.MsgType.BRIDGE]),
    st.binary(min_size=0, max_size=40),
    st.integers(0, 2**64 - 1),
)
def test_signed_but_malformed_bodies_are_rejected_cleanly(
    typ: host.MsgType, body: bytes, counter: int
) -> None:
    head = struct.pack(">2sBB8sQ", b"BR", 1, typ, RID, counter)
    msg = head + body + host.sign(KEY, head + body)
    ok = len(body) == host.BODY[typ].size
    for decode, err in ((lambda m: host.decode(KEY, m), host.WireError),
                        (lambda m: fw.decode(Hmac(KEY), m), fw.WireError)):  # fmt: skip
        if ok:
            assert decode(msg)[2] == counter
        else:
            with pytest.raises(err):
                decode(msg)


@settings(deadline=None)
@given(st.lists(st.integers(0, 400), max_size=60))
def test_window_accepts_each_counter_once(counters: list[int]) -> None:
    a, b = host.Window(0), fw.Window(0)
    seen: set[int] = set()
    for c in counters:
        ra, rb = a.accept(c), b.accept(c)
        assert ra == rb
        if ra:
            assert c not in seen and c > 0
            seen.add(c)
