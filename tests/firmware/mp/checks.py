# Checks of the relay firmware that run inside real MicroPython (the WebAssembly port).
# The host test writes /vectors.json (messages and sealed requests made by the box's code)
# and reads one "PASS name" / "FAIL name: error" line per check.
import gc
import json
import random
import socket
import sys

import brelay.rand
import machine
import network
from brelay import cfg, chunk, led, prov, relay, wire
from brelay.hmac import Hmac, hmac_sha256
from brelay.net import Net


def _test_random(n):
    # Test double: the WebAssembly port has no os.urandom.
    return bytes(random.getrandbits(8) for _ in range(n))


brelay.rand.urandom = _test_random

with open("/vectors.json") as _f:
    V = json.loads(_f.read())
KEY = bytes.fromhex(V["key"])
RID = bytes.fromhex(V["rid"])
BOX = ("10.0.0.1", 7701)


def check_hmac():
    got = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert got.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def check_wire_interop():
    mac = Hmac(KEY)
    for typ, counter, fields, hexmsg in V["msgs"]:
        msg = bytes.fromhex(hexmsg)
        t, rid, c, body = wire.decode(mac, msg, RID)
        assert (t, rid, c) == (typ, RID, counter), (t, c)
        if typ == wire.BRIDGE:
            assert body == bytes.fromhex(fields[0])
            again = wire.pack(mac, typ, RID, counter, body)
        else:
            want = [bytes.fromhex(f[2:]) if isinstance(f, str) else f for f in fields]
            assert list(body) == want, (body, want)
            again = wire.pack(mac, typ, RID, counter, *want)
        assert again == msg
        bad = bytearray(msg)
        bad[-1] ^= 1
        try:
            wire.decode(mac, bad, RID)
            raise AssertionError("tampered message accepted")
        except wire.WireError:
            pass


class MiniBox:
    # The box's side of the protocol, enough to drive the engine inside MicroPython.
    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(BOX)
        self.mac = Hmac(KEY)
        self.counter = 1000
        self.buf = bytearray(wire.MAX_MSG)
        self.got = []
        self.relay_addr = None

    def send(self, typ, *fields):
        self.counter += 1
        msg = wire.pack(self.mac, typ, RID, self.counter, *fields)
        self.sock.sendto(msg, self.relay_addr)
        return msg

    def pump(self):
        while self.sock.count:
            data, addr = self.sock.recvfrom(wire.MAX_MSG)
            self.relay_addr = addr
            t, _, _, body = wire.decode(self.mac, data, RID)
            self.got.append((t, body))
            if t == wire.HELLO:
                self.send(wire.WELCOME, body[0], 15000)


def make_rig():
    socket.bound.clear()
    c = {"relay_id": RID, "key": KEY, "home": BOX, "port_base": 7710, "epoch": 3}
    r = relay.Relay(c, Net("10.0.0.2"), heap=gc.mem_free)
    box = MiniBox()
    r.start(0)
    r.step(0)
    box.pump()
    r.pump(1)
    assert r.state == relay.RUNNING
    return r, box


def allocate(r, box, alloc_id, byte_q=1 << 20, pkt_q=100000):
    box.send(wire.ALLOC, alloc_id, 0, 0, byte_q, pkt_q, 60000)
    r.pump(2)
    box.pump()
    t, body = box.got[-1]
    assert t == wire.ALLOC_OK, (t, body)
    a = socket.socket()
    a.bind(("198.18.0.5", 40000 + alloc_id))
    b = socket.socket()
    b.bind(("198.18.0.6", 41000 + alloc_id))
    pa = ("10.0.0.2", body[1])
    pb = ("10.0.0.2", body[2])
    b.sendto(b"latch", pb)
    r.pump(3)
    return a, b, pa, pb


def check_engine_forwards_and_rejects_replays():
    r, box = make_rig()
    a, b, pa, pb = allocate(r, box, 1)
    buf = bytearray(2048)
    for i in range(10):
        frame = bytes([i]) * (10 + i)
        a.sendto(frame, pa)
        r.pump(4)
        n = b.readinto(buf)
        assert bytes(buf[:n]) == frame
        b.sendto(bytes(reversed(frame)), pb)
        r.pump(4)
        n = a.readinto(buf)
        assert bytes(buf[:n]) == bytes(reversed(frame))
    free = box.send(wire.FREE, 1)
    r.pump(5)
    assert r.allocations() == 0
    box.sock.sendto(free, box.relay_addr)
    old_alloc = wire.pack(Hmac(KEY), wire.ALLOC, RID, 1001, 9, 0, 0, 1000, 1000, 60000)
    box.sock.sendto(old_alloc, box.relay_addr)
    forged = wire.pack(Hmac(b"k" * 32), wire.ALLOC, RID, 10**9, 9, 0, 0, 1000, 1000, 60000)
    box.sock.sendto(forged, box.relay_addr)
    before = r.rejected
    r.pump(6)
    assert r.rejected == before + 3 and r.allocations() == 0


def check_engine_quota():
    r, box = make_rig()
    a, _, pa, _ = allocate(r, box, 2, pkt_q=3)
    for _ in range(3):
        a.sendto(b"x", pa)
        r.pump(7)
    box.pump()
    ends = [body for t, body in box.got if t == wire.ALLOC_END]
    assert ends and ends[0][0] == 2 and ends[0][1] == wire.END_QUOTA, ends


def check_heap_per_frame():
    # Steady-state forwarding must not allocate: measured with gc.mem_alloc() deltas.
    r, box = make_rig()
    a, b, pa, _ = allocate(r, box, 3)
    frame = bytes(200)
    buf = bytearray(2048)
    for _ in range(50):
        a.sendto(frame, pa)
        r.pump(8)
        b.readinto(buf)
    gc.collect()
    gc.disable()
    total = 0
    n = 500
    for _ in range(n):
        a.sendto(frame, pa)
        before = gc.mem_alloc()
        r.pump(8)
        total += gc.mem_alloc() - before
        b.readinto(buf)
    gc.enable()
    print("HEAP_PER_FRAME", total / n)
    assert total == 0, total


def check_prov_unseal():
    s = V["sealed"]
    p = prov.Provisioner(s["code"], 0, True)
    p.nonce = bytes.fromhex(s["nonce_d"])
    fields = p.request(bytes.fromhex(s["msg"]), 10)
    assert fields is not None, p.result
    assert fields["ssid"] == s["ssid"] and fields["home"] == ("192.168.1.5", 7701)
    assert p.state == prov.DONE and p.nonce != bytes.fromhex(s["nonce_d"])
    q = prov.Provisioner(prov.new_setup_code(), 0, True)
    q.nonce = bytes.fromhex(s["nonce_d"])
    for _ in range(5):
        assert q.request(bytes.fromhex(s["msg"]), 10) is None
    assert q.result == prov.ERR_AUTH and q.state == prov.LOCKED
    idle = prov.Provisioner(s["code"], 0, False)
    idle.nonce = bytes.fromhex(s["nonce_d"])
    assert idle.request(bytes.fromhex(s["msg"]), 10) is None
    assert idle.result == prov.ERR_NOT_PAIRING


def check_cfg():
    good = json.dumps({"relay_id": "00" * 8, "key": "11" * 32, "home": "box.lan:7701"})
    c = cfg.parse(good)
    assert c["home"] == ("box.lan", 7701) and c["port_base"] == 7710
    for bad in ("[]", "{", '{"relay_id": "zz"}', '{"port_base": 5}', '{"epoch": true}'):
        try:
            cfg.parse(bad)
            raise AssertionError("accepted " + bad)
        except cfg.ConfigError:
            pass
    cfg.save({"ssid": "home"}, "/cfg-test.json")
    assert cfg.load("/cfg-test.json")["ssid"] == "home"
    assert "relay_id" not in cfg.load("/missing.json")


def check_chunks():
    frame = bytes(range(256)) * 3
    j = chunk.Joiner(1200)
    out = None
    parts = list(chunk.chunks(frame, 23))
    assert len(parts) == 41
    for part in parts:
        out = j.feed(part)
    assert bytes(out) == frame


def check_led():
    pin = machine.Pin(2)
    status = led.Led(pin, 0)
    status.set(led.ERROR, 0)
    for t in range(0, 1500, 50):
        status.tick(t)
    assert pin.history[:7] == [0, 1, 0, 1, 0, 1, 0], pin.history


def check_app_watchdog_and_wifi():
    from brelay import app

    c = cfg.parse(
        json.dumps(
            {
                "relay_id": "00" * 8,
                "key": "11" * 32,
                "home": "10.0.0.1:7701",
                "ssid": "home",
                "psk": "password1",
                "setup": "A" * 16,
            }
        )
    )
    machine.wdts.clear()
    pressed = [0]
    a = app.App(c, machine.Pin(2), lambda: pressed[0], 0, path="/app-test.json")
    for t in range(0, app.GRACE_MS, 500):
        a.turn(t)
    assert not machine.wdts and a.pattern() is led.CONNECTING
    assert len(network.connects) >= 3
    a.turn(app.GRACE_MS)
    a.turn(app.GRACE_MS + 100)
    assert machine.wdts and machine.wdts[0].feeds == 1
    pressed[0] = 1
    a.turn(app.GRACE_MS + 200)
    assert a.pattern() is led.PAIRING


CHECKS = [n for n in sorted(globals()) if n.startswith("check_")]
for name in CHECKS:
    try:
        globals()[name]()
        print("PASS", name)
    except Exception as e:
        sys.print_exception(e)
        print("FAIL", name + ":", repr(e))
print("DONE", len(CHECKS))
