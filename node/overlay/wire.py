"""DHT messages: one request and one answer per RPC.

Every message starts with version, type and a 64-bit request id that the answer repeats.
Requests carry the sender's signed record (so the receiver can add it to its routing table
and reach it later); answers carry node records and, for GET_PROVIDERS, provider records.
Parsing bounds every count and length and raises :class:`WireError` on anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from node.overlay.errors import WireError
from node.overlay.records import MAX_RECORD, NodeRecord, parse_record

VERSION = 1
KEY_LEN = 32
MAX_NODES = 20  # k: no answer lists more
MAX_MESSAGE = 8 + KEY_LEN + 2 * (1 + MAX_NODES * (2 + MAX_RECORD)) + 2 + MAX_RECORD
_HEAD = struct.Struct("!BBQ")


class MsgType(IntEnum):
    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    GET_PROVIDERS = 5
    PROVIDERS = 6
    ADD_PROVIDER = 7
    ACK = 8


REQUESTS = frozenset({MsgType.PING, MsgType.FIND_NODE, MsgType.GET_PROVIDERS, MsgType.ADD_PROVIDER})
_HAS_KEY = frozenset({MsgType.FIND_NODE, MsgType.GET_PROVIDERS, MsgType.ADD_PROVIDER})


@dataclass
class Message:
    type: MsgType
    request_id: int
    key: bytes = b""
    """Target id of FIND_NODE, chunk id of GET_PROVIDERS / ADD_PROVIDER."""
    sender: NodeRecord | None = None
    """The sender's own record (requests, and PONG so a ping learns the peer's record)."""
    nodes: list[NodeRecord] = field(default_factory=list)
    """Closest nodes known to the answerer (NODES, PROVIDERS)."""
    providers: list[NodeRecord] = field(default_factory=list)
    """Records of nodes that provide ``key`` (PROVIDERS)."""

    @property
    def is_request(self) -> bool:
        return self.type in REQUESTS


def _records(records: list[NodeRecord]) -> bytes:
    if len(records) > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} records per message")
    out = [bytes([len(records)])]
    for rec in records:
        raw = rec.encode()
        out.append(struct.pack("!H", len(raw)) + raw)
    return b"".join(out)


def encode(msg: Message) -> bytes:
    out = [_HEAD.pack(VERSION, msg.type, msg.request_id)]
    if msg.type in _HAS_KEY:
        if len(msg.key) != KEY_LEN:
            raise ValueError(f"{msg.type.name} needs a {KEY_LEN}-byte key")
        out.append(msg.key)
    if msg.is_request or msg.type == MsgType.PONG:
        if msg.sender is None:
            raise ValueError("requests and PONG carry the sender's record")
        raw = msg.sender.encode()
        out.append(struct.pack("!H", len(raw)) + raw)
    if msg.type in (MsgType.NODES, MsgType.PROVIDERS):
        out.append(_records(msg.nodes))
    if msg.type == MsgType.PROVIDERS:
        out.append(_records(msg.providers))
    return b"".join(out)


def _read_record(data: bytes, pos: int) -> tuple[NodeRecord, int]:
    if pos + 2 > len(data):
        raise WireError(f"DHT message truncated at offset {pos}")
    (length,) = struct.unpack_from("!H", data, pos)
    if length > MAX_RECORD:
        raise WireError(f"record of {length} bytes exceeds {MAX_RECORD}")
    end = pos + 2 + length
    if end > len(data):
        raise WireError("record runs past the end of the DHT message")
    return parse_record(bytes(data[pos + 2 : end])), end


def _read_records(data: bytes, pos: int) -> tuple[list[NodeRecord], int]:
    if pos >= len(data):
        raise WireError(f"DHT message truncated at offset {pos}")
    count = data[pos]
    if count > MAX_NODES:
        raise WireError(f"DHT message lists {count} records (max {MAX_NODES})")
    pos += 1
    records = []
    for _ in range(count):
        record, pos = _read_record(data, pos)
        records.append(record)
    return records, pos


def decode(data: bytes) -> Message:
    """Parse one DHT message; raises WireError saying what is wrong."""
    if len(data) > MAX_MESSAGE:
        raise WireError(f"DHT message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if len(data) < _HEAD.size:
        raise WireError(f"DHT message of {len(data)} bytes is shorter than its header")
    version, kind, request_id = _HEAD.unpack_from(data)
    if version != VERSION:
        raise WireError(f"DHT message version {version}, expected {VERSION}")
    try:
        mtype = MsgType(kind)
    except ValueError:
        raise WireError(f"unknown DHT message type {kind}") from None
    msg = Message(mtype, request_id)
    pos = _HEAD.size
    if mtype in _HAS_KEY:
        msg.key = bytes(data[pos : pos + KEY_LEN])
        if len(msg.key) != KEY_LEN:
            raise WireError(f"{mtype.name} truncated in its key")
        pos += KEY_LEN
    if msg.is_request or mtype == MsgType.PONG:
        msg.sender, pos = _read_record(data, pos)
    if mtype in (MsgType.NODES, MsgType.PROVIDERS):
        msg.nodes, pos = _read_records(data, pos)
    if mtype == MsgType.PROVIDERS:
        msg.providers, pos = _read_records(data, pos)
    if pos != len(data):
        raise WireError(f"{mtype.name} has {len(data) - pos} trailing bytes")
    return msg
