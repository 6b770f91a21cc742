"""The relay control protocol, box side; byte-compatible with the firmware's ``brelay/wire.py``.

Every message is ``"BR" | version | type | relay id (8) | counter (8) | body | tag (32)``, the
tag being HMAC-SHA256 under the relay's enrollment key over everything before it. Bodies have
a fixed layout per type (BRIDGE carries 1..MAX_BRIDGE opaque bytes). Counters only grow; a
receiver keeps a 64-entry replay window (:class:`Window`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from enum import IntEnum
from typing import Any

MAGIC = b"BR"
VERSION = 1
HEADER = 20
TAG = 32
MAX_BRIDGE = 1200
MAX_MSG = HEADER + MAX_BRIDGE + TAG
WINDOW = 64
_HEAD = struct.Struct(">2sBB8sQ")


class MsgType(IntEnum):
    HELLO = 1
    WELCOME = 2
    HEARTBEAT = 3
    HEARTBEAT_ACK = 4
    ALLOC = 5
    ALLOC_OK = 6
    ALLOC_ERR = 7
    FREE = 8
    ALLOC_END = 9
    BRIDGE = 10


BODY: dict[MsgType, struct.Struct] = {
    MsgType.HELLO: struct.Struct(">8sHIHB"),
    MsgType.WELCOME: struct.Struct(">8sI"),
    MsgType.HEARTBEAT: struct.Struct(">IIBIII"),
    MsgType.HEARTBEAT_ACK: struct.Struct(">"),
    MsgType.ALLOC: struct.Struct(">IIIIII"),
    MsgType.ALLOC_OK: struct.Struct(">IHH"),
    MsgType.ALLOC_ERR: struct.Struct(">IB"),
    MsgType.FREE: struct.Struct(">I"),
    MsgType.ALLOC_END: struct.Struct(">IBII"),
}


class AllocError(IntEnum):
    FULL = 1
    EXISTS = 2
    BAD = 3


class EndReason(IntEnum):
    FREED = 1
    IDLE = 2
    QUOTA = 3
    RESET = 4


class WireError(ValueError):
    """A control message is malformed or not authentic."""


def sign(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def encode(key: bytes, typ: MsgType, relay_id: bytes, counter: int, *fields: Any) -> bytes:
    """One signed message; ``fields`` follow the type's body layout (BRIDGE: the payload)."""
    if typ == MsgType.BRIDGE:
        body = bytes(fields[0])
        if not 0 < len(body) <= MAX_BRIDGE:
            raise ValueError(f"bridge payload must be 1-{MAX_BRIDGE} bytes")
    else:
        body = BODY[typ].pack(*fields)
    head = _HEAD.pack(MAGIC, VERSION, typ, relay_id, counter)
    return head + body + sign(key, head + body)


def peek_relay_id(msg: bytes) -> bytes:
    """The (not yet authenticated) relay id, to find the key; raises WireError."""
    if len(msg) < HEADER + TAG or msg[:2] != MAGIC:
        raise WireError("not a relay control message")
    return bytes(msg[4:12])


def decode(key: bytes, msg: bytes) -> tuple[MsgType, bytes, int, tuple[Any, ...]]:
    """Verify and split: (type, relay id, counter, body fields); BRIDGE gives (payload,)."""
    n = len(msg)
    if n < HEADER + TAG:
        raise WireError("short message")
    if n > MAX_MSG:
        raise WireError("message too long")
    magic, version, raw_type, relay_id, counter = _HEAD.unpack_from(msg)
    if magic != MAGIC:
        raise WireError("bad magic")
    if version != VERSION:
        raise WireError(f"unknown version {version}")
    try:
        typ = MsgType(raw_type)
    except ValueError:
        raise WireError(f"unknown type {raw_type}") from None
    body = msg[HEADER : n - TAG]
    if typ == MsgType.BRIDGE:
        if not 0 < len(body) <= MAX_BRIDGE:
            raise WireError("bad bridge length")
    elif len(body) != BODY[typ].size:
        raise WireError(f"bad body length for {typ.name}")
    if not hmac.compare_digest(sign(key, msg[: n - TAG]), msg[n - TAG :]):
        raise WireError("bad tag")
    fields: tuple[Any, ...] = (bytes(body),) if typ == MsgType.BRIDGE else BODY[typ].unpack(body)
    return typ, relay_id, counter, fields


class Window:
    """Replay window: the highest counter accepted and a bitmap of the 64 below it."""

    def __init__(self, floor: int = 0) -> None:
        self.top = floor
        self.bits = (1 << WINDOW) - 1

    def fresh(self, counter: int) -> bool:
        if counter > self.top:
            return True
        d = self.top - counter
        return 0 < d < WINDOW and not (self.bits >> d) & 1

    def accept(self, counter: int) -> bool:
        """Record ``counter``; False (and nothing recorded) when seen before or too old."""
        if not self.fresh(counter):
            return False
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)
        return True
