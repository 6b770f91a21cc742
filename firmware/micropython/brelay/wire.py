# Control messages between a relay and its home box.
#
# Every message: magic "BR", version, type, relay id (8), counter (8), a fixed-size body per
# type (BRIDGE: 1..MAX_BRIDGE bytes), then HMAC-SHA256 over all of it under the enrollment key.
# Counters only grow: the relay's is epoch << 32 | sequence (the epoch is persisted and bumped
# at every boot), the box's follows its clock. A receiver keeps the highest counter seen and a
# 64-entry window below it, so a replayed or forged message is dropped.
import struct

from brelay.hmac import equal
from micropython import const

MAGIC = b"BR"
_VERSION = const(1)
HEADER = const(20)
TAG = const(32)
MAX_BRIDGE = const(1200)
MAX_MSG = const(1252)
_WINDOW = const(64)

HELLO = const(1)
WELCOME = const(2)
HEARTBEAT = const(3)
HEARTBEAT_ACK = const(4)
ALLOC = const(5)
ALLOC_OK = const(6)
ALLOC_ERR = const(7)
FREE = const(8)
ALLOC_END = const(9)
BRIDGE = const(10)

# Body layouts (struct formats, big-endian); BRIDGE is variable.
BODY = {
    HELLO: ">8sHIHB",  # challenge, firmware version, free heap, port base, slots
    WELCOME: ">8sI",  # challenge echoed, keepalive ms
    HEARTBEAT: ">IIBIII",  # free heap, uptime s, allocations, packets, bytes, drops
    HEARTBEAT_ACK: ">",
    ALLOC: ">IIIIII",  # alloc id, ip a, ip b, byte quota, packet quota, idle ms
    ALLOC_OK: ">IHH",  # alloc id, port a, port b
    ALLOC_ERR: ">IB",  # alloc id, error code
    FREE: ">I",  # alloc id
    ALLOC_END: ">IBII",  # alloc id, reason, packets, bytes
}

# ALLOC_ERR codes and ALLOC_END reasons.
ERR_FULL = const(1)
ERR_EXISTS = const(2)
ERR_BAD = const(3)
END_FREED = const(1)
END_IDLE = const(2)
END_QUOTA = const(3)
END_RESET = const(4)


class WireError(ValueError):
    pass


def encode(mac, typ, relay_id, counter, body):
    """Header + body + tag as bytes; ``body`` is already packed."""
    head = struct.pack(">2sBB8sQ", MAGIC, _VERSION, typ, relay_id, counter)
    return head + body + mac.digest(head, body)


def pack(mac, typ, relay_id, counter, *fields):
    if typ == BRIDGE:
        return encode(mac, typ, relay_id, counter, fields[0])
    return encode(mac, typ, relay_id, counter, struct.pack(BODY[typ], *fields))


def decode(mac, msg, relay_id=None):
    """Check and split a message: (type, relay id, counter, body fields or bytes).

    Raises WireError naming what was wrong; the tag is checked before anything is trusted.
    """
    n = len(msg)
    if n < HEADER + TAG:
        raise WireError("short message")
    if n > MAX_MSG:
        raise WireError("message too long")
    if bytes(msg[0:2]) != MAGIC:
        raise WireError("bad magic")
    if msg[2] != _VERSION:
        raise WireError("unknown version")
    typ = msg[3]
    rid = bytes(msg[4:12])
    if relay_id is not None and rid != relay_id:
        raise WireError("wrong relay id")
    blen = n - HEADER - TAG
    if typ == BRIDGE:
        if not 0 < blen <= MAX_BRIDGE:
            raise WireError("bad bridge length")
    elif typ in BODY:
        if blen != struct.calcsize(BODY[typ]):
            raise WireError("bad body length")
    else:
        raise WireError("unknown type")
    tag = mac.digest(msg[:HEADER], msg[HEADER : n - TAG])
    if not equal(tag, msg[n - TAG : n]):
        raise WireError("bad tag")
    counter = struct.unpack_from(">Q", msg, 12)[0]
    body = msg[HEADER : n - TAG]
    if typ == BRIDGE:
        return typ, rid, counter, bytes(body)
    return typ, rid, counter, struct.unpack(BODY[typ], body)


class Window:
    """Replay window: the highest counter accepted and a bitmap of the 64 below it."""

    def __init__(self, floor=0):
        # Everything at or below the floor counts as seen.
        self.top = floor
        self.bits = (1 << _WINDOW) - 1

    def fresh(self, c):
        if c > self.top:
            return True
        d = self.top - c
        return 0 < d < _WINDOW and not (self.bits >> d) & 1

    def accept(self, c):
        """Record ``c``; False (and nothing recorded) when it was seen or is too old."""
        if not self.fresh(c):
            return False
        if c > self.top:
            shift = c - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << _WINDOW) - 1) if shift < _WINDOW else 1
            self.top = c
        else:
            self.bits |= 1 << (self.top - c)
        return True
