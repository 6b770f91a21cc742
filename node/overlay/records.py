"""Signed node records: who a node is, where it can be reached, how, and until when.

A record names the node's Ed25519 public key (its id is BLAKE2b-256 of it), its addresses as
``HOST:PORT``, its NAT class, the relays through which it can be reached (each a ``HOST:PORT``
or a node id in hex; an entry ``mp:HOST:PORT`` is a MicroPython relay, see :func:`relay_kind`),
a sequence number (newer wins) and an expiry in Unix seconds. The
binary form is canonical and signed with the node's identity, so a record passed along by
third parties cannot be altered, and a record stored under an id that is not the hash of its
key is rejected.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from node import identity
from node.overlay.errors import WireError

_DOMAIN = b"bitchat-node record v1\x00"
_VERSION = 1
_FIXED = struct.Struct("!B32sQQ")  # version, public key, seq, expires
SIGNATURE_LEN = 64
MAX_ADDRESSES = 8
MAX_RELAYS = 8
MAX_TEXT = 64
MAX_RECORD = 1 + 32 + 16 + 1 + MAX_TEXT + 2 + (MAX_ADDRESSES + MAX_RELAYS) * (1 + MAX_TEXT) + 64


@dataclass(frozen=True, slots=True)
class NodeRecord:
    public_key: bytes
    """Ed25519 public key (32 bytes); the node id is its BLAKE2b-256."""
    addresses: tuple[str, ...]
    """Where the node listens or was seen, ``HOST:PORT`` (most preferred first)."""
    nat_class: str
    """The node's NAT class as discovery named it (``public``, ``full-cone``, …) or empty."""
    relays: tuple[str, ...]
    """Relays that forward to this node: ``HOST:PORT`` or a relay node id in hex (node relays),
    or ``mp:HOST:PORT`` (a MicroPython relay's allocation; :func:`relay_kind`)."""
    seq: int
    """Version of this record; a higher seq replaces a lower one."""
    expires: int
    """Unix time after which the record is void."""
    signature: bytes = b""
    node_id: bytes = field(init=False, repr=False, compare=False)
    """BLAKE2b-256 of ``public_key`` (derived, never taken from the wire)."""

    raw: bytes = field(init=False, repr=False, compare=False, default=b"")
    """The encoded record, kept once computed or parsed."""

    id_int: int = field(init=False, repr=False, compare=False, default=0)
    """``node_id`` as an integer, for XOR distances."""

    def __post_init__(self) -> None:
        node_id = identity.node_id_of(self.public_key)
        object.__setattr__(self, "node_id", node_id)
        object.__setattr__(self, "id_int", int.from_bytes(node_id, "big"))

    def signed_part(self) -> bytes:
        out = [_FIXED.pack(_VERSION, self.public_key, self.seq, self.expires)]
        out.append(_text(self.nat_class))
        out.append(struct.pack("!BB", len(self.addresses), len(self.relays)))
        out.extend(_text(a) for a in self.addresses)
        out.extend(_text(r) for r in self.relays)
        return b"".join(out)

    def encode(self) -> bytes:
        if not self.raw:
            if len(self.signature) != SIGNATURE_LEN:
                raise ValueError("record is not signed")
            object.__setattr__(self, "raw", self.signed_part() + self.signature)
        return self.raw

    def verify(self, now: float) -> None:
        """Raise WireError unless the signature is valid and the record has not expired."""
        if not identity.verify(self.public_key, _DOMAIN + self.signed_part(), self.signature):
            raise WireError(f"record of {self.node_id.hex()[:16]} has a bad signature")
        if self.expires < now:
            raise WireError(f"record of {self.node_id.hex()[:16]} expired at {self.expires}")


RELAY_NODE = "node"
RELAY_MICROPYTHON = "micropython"
_MICROPYTHON_PREFIX = "mp:"


def relay_entry(kind: str, address: str) -> str:
    """The ``relays`` entry for a relay of ``kind`` reached at ``address``."""
    if kind == RELAY_MICROPYTHON:
        return _MICROPYTHON_PREFIX + address
    if kind != RELAY_NODE:
        raise ValueError(f"unknown relay kind {kind!r}")
    return address


def relay_kind(entry: str) -> tuple[str, str]:
    """(kind, address) of a ``relays`` entry.

    A node relay (``HOST:PORT`` or node id) speaks the relay protocol over a transport session.
    A MicroPython relay (``mp:HOST:PORT``) is an allocation its home node holds on an enrolled
    board: datagrams sent to that address reach the node unchanged, so a peer simply opens its
    session to it. Nodes that predate the kind see an address they cannot parse and skip it.
    """
    if entry.startswith(_MICROPYTHON_PREFIX):
        return RELAY_MICROPYTHON, entry[len(_MICROPYTHON_PREFIX) :]
    return RELAY_NODE, entry


def _text(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_TEXT:
        raise ValueError(f"record field {value[:20]!r}… is longer than {MAX_TEXT} bytes")
    return bytes([len(raw)]) + raw


def sign_record(
    ident: identity.Identity,
    *,
    addresses: tuple[str, ...],
    nat_class: str,
    relays: tuple[str, ...] = (),
    seq: int,
    expires: int,
) -> NodeRecord:
    """A record for ``ident`` signed with it."""
    if len(addresses) > MAX_ADDRESSES or len(relays) > MAX_RELAYS:
        raise ValueError(f"a record holds at most {MAX_ADDRESSES} addresses and relays each")
    unsigned = NodeRecord(ident.public_key, addresses, nat_class, relays, seq, expires)
    sig = ident.sign(_DOMAIN + unsigned.signed_part())
    return NodeRecord(ident.public_key, addresses, nat_class, relays, seq, expires, sig)


_decoded: OrderedDict[bytes, NodeRecord] = OrderedDict()
_DECODED_CACHE = 16384


def parse_record(data: bytes) -> NodeRecord:
    """Parse exactly one record (signature unchecked); memoised on the exact bytes."""
    cached = _decoded.get(data)
    if cached is not None:
        _decoded.move_to_end(data)
        return cached
    record, used = decode_record(data)
    if used != len(data):
        raise WireError(f"record has {len(data) - used} trailing bytes")
    object.__setattr__(record, "raw", bytes(data))
    _decoded[bytes(data)] = record
    if len(_decoded) > _DECODED_CACHE:
        _decoded.popitem(last=False)
    return record


def decode_record(data: bytes, pos: int = 0) -> tuple[NodeRecord, int]:
    """Parse one record at ``pos``; returns it and the offset after it. Signature unchecked."""
    try:
        version, public_key, seq, expires = _FIXED.unpack_from(data, pos)
    except struct.error:
        raise WireError(f"record truncated at offset {pos}") from None
    if version != _VERSION:
        raise WireError(f"record version {version}, expected {_VERSION}")
    pos += _FIXED.size
    nat_class, pos = _read_text(data, pos)
    if pos + 2 > len(data):
        raise WireError("record truncated in its counts")
    n_addr, n_relay = data[pos], data[pos + 1]
    pos += 2
    if n_addr > MAX_ADDRESSES or n_relay > MAX_RELAYS:
        raise WireError(f"record lists {n_addr} addresses and {n_relay} relays (max 8 each)")
    addresses = []
    for _ in range(n_addr):
        text, pos = _read_text(data, pos)
        addresses.append(text)
    relays = []
    for _ in range(n_relay):
        text, pos = _read_text(data, pos)
        relays.append(text)
    signature = bytes(data[pos : pos + SIGNATURE_LEN])
    if len(signature) != SIGNATURE_LEN:
        raise WireError("record truncated in its signature")
    record = NodeRecord(
        bytes(public_key), tuple(addresses), nat_class, tuple(relays), seq, expires, signature
    )
    return record, pos + SIGNATURE_LEN


def _read_text(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise WireError(f"record truncated at offset {pos}")
    n = data[pos]
    raw = data[pos + 1 : pos + 1 + n]
    if len(raw) != n or n > MAX_TEXT:
        raise WireError(f"record text field of {n} bytes is truncated or too long")
    try:
        return raw.decode(), pos + 1 + n
    except UnicodeDecodeError:
        raise WireError("record text field is not UTF-8") from None
