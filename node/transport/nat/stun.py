"""STUN message codec (RFC 8489 wire format, RFC 5780 behaviour-discovery attributes).

A message is a 20-byte header (type, length, magic cookie, 96-bit transaction id) followed by
TLV attributes padded to 4 bytes. :func:`decode` checks the header, every attribute's bounds
and a FINGERPRINT when present, and raises :class:`StunError` with a reason on anything else;
:func:`encode` appends MESSAGE-INTEGRITY (short-term credential, HMAC-SHA1) and FINGERPRINT on
request. Addresses are ``(host, port)`` tuples.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from node.transport.nat.errors import StunError

MAGIC_COOKIE = 0x2112A442
HEADER_LEN = 20
TRANSACTION_ID_LEN = 12
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 section 14.7
MAX_MESSAGE = 2048  # nothing larger is accepted (RFC 5780 PADDING fills a 1500-byte MTU)
SOFTWARE = "bitchat-node"

Address = tuple[str, int]


class Method(IntEnum):
    BINDING = 0x001


class Class(IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489, obsolete
    CHANGE_REQUEST = 0x0003  # RFC 5780
    SOURCE_ADDRESS = 0x0004  # RFC 3489, obsolete
    CHANGED_ADDRESS = 0x0005  # RFC 3489, obsolete
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    XOR_MAPPED_ADDRESS = 0x0020
    PADDING = 0x0026  # RFC 5780
    RESPONSE_PORT = 0x0027  # RFC 5780
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B  # RFC 5780
    OTHER_ADDRESS = 0x802C  # RFC 5780


# CHANGE-REQUEST flags (RFC 5780 section 7.2)
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

_ADDRESS_ATTRS = frozenset(
    {
        Attr.MAPPED_ADDRESS,
        Attr.RESPONSE_ADDRESS,
        Attr.SOURCE_ADDRESS,
        Attr.CHANGED_ADDRESS,
        Attr.ALTERNATE_SERVER,
        Attr.RESPONSE_ORIGIN,
        Attr.OTHER_ADDRESS,
    }
)
_FAMILY_V4 = 0x01
_FAMILY_V6 = 0x02


def is_stun(data: bytes) -> bool:
    """True when ``data`` looks like a STUN message (the transport's demultiplexing rule)."""
    return (
        len(data) >= HEADER_LEN
        and data[0] & 0xC0 == 0
        and int.from_bytes(data[4:8], "big") == MAGIC_COOKIE
    )


def message_type(method: int, cls: Class) -> int:
    """Interleave method and class bits into the 14-bit message type (RFC 8489 section 5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_type(value: int) -> tuple[int, Class]:
    """Inverse of :func:`message_type`."""
    method = (value & 0x000F) | ((value & 0x00E0) >> 1) | ((value & 0x3E00) >> 2)
    cls = Class(((value >> 4) & 0b01) | ((value >> 7) & 0b10))
    return method, cls


@dataclass
class Message:
    """One STUN message; attributes are kept raw and in order, read through the helpers."""

    method: int
    cls: Class
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, attr: int) -> bytes | None:
        """Value of the first attribute of this type, or None."""
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return None

    def add(self, attr: int, value: bytes) -> Message:
        self.attributes.append((attr, value))
        return self

    def address(self, attr: int) -> Address | None:
        """A decoded address attribute (XOR-MAPPED-ADDRESS un-XORed), or None when absent."""
        value = self.get(attr)
        if value is None:
            return None
        if attr == Attr.XOR_MAPPED_ADDRESS:
            return decode_xor_address(value, self.transaction_id)
        return decode_address(value)

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, falling back to MAPPED-ADDRESS for old servers."""
        return self.address(Attr.XOR_MAPPED_ADDRESS) or self.address(Attr.MAPPED_ADDRESS)

    @property
    def other_address(self) -> Address | None:
        """OTHER-ADDRESS (RFC 5780), falling back to RFC 3489's CHANGED-ADDRESS."""
        return self.address(Attr.OTHER_ADDRESS) or self.address(Attr.CHANGED_ADDRESS)

    @property
    def error(self) -> tuple[int, str] | None:
        value = self.get(Attr.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    @property
    def change_request(self) -> int:
        value = self.get(Attr.CHANGE_REQUEST)
        if value is None:
            return 0
        if len(value) != 4:
            raise StunError(f"CHANGE-REQUEST of {len(value)} bytes, expected 4")
        return int.from_bytes(value, "big") & (CHANGE_IP | CHANGE_PORT)

    @property
    def software(self) -> str | None:
        value = self.get(Attr.SOFTWARE)
        return None if value is None else value.decode("utf-8", "replace")

    def unknown_required(self, known: frozenset[int]) -> list[int]:
        """Comprehension-required attribute types (< 0x8000) not in ``known``."""
        return sorted({kind for kind, _ in self.attributes if kind < 0x8000 and kind not in known})


def binding_request(transaction_id: bytes, *, change: int = 0) -> Message:
    msg = Message(Method.BINDING, Class.REQUEST, transaction_id)
    if change:
        msg.add(Attr.CHANGE_REQUEST, struct.pack("!I", change))
    return msg


# -- address attributes --------------------------------------------------------------------


def encode_address(addr: Address) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    family = _FAMILY_V4 if ip.version == 4 else _FAMILY_V6
    return struct.pack("!BBH", 0, family, addr[1]) + ip.packed


def decode_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunError(f"address attribute of {len(value)} bytes is too short")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if family == _FAMILY_V4 and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw)), port
    if family == _FAMILY_V6 and len(raw) == 16:
        return str(ipaddress.IPv6Address(raw)), port
    raise StunError(f"address attribute with family {family} and {len(raw)} address bytes")


def _xor_mask(length: int, transaction_id: bytes) -> bytes:
    return (MAGIC_COOKIE.to_bytes(4, "big") + transaction_id)[:length]


def encode_xor_address(addr: Address, transaction_id: bytes) -> bytes:
    plain = encode_address(addr)
    port = addr[1] ^ (MAGIC_COOKIE >> 16)
    ip = plain[4:]
    masked = bytes(a ^ b for a, b in zip(ip, _xor_mask(len(ip), transaction_id), strict=True))
    return plain[:2] + struct.pack("!H", port) + masked


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 4:
        raise StunError(f"XOR-MAPPED-ADDRESS of {len(value)} bytes is too short")
    ip = value[4:]
    if len(ip) not in (4, 16):
        raise StunError(f"XOR-MAPPED-ADDRESS with {len(ip)} address bytes")
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    plain = bytes(a ^ b for a, b in zip(ip, _xor_mask(len(ip), transaction_id), strict=True))
    return decode_address(value[:2] + struct.pack("!H", port) + plain)


def encode_error_code(code: int, reason: str) -> bytes:
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} is outside 300-699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode()[:763]


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError(f"ERROR-CODE of {len(value)} bytes is too short")
    cls, number = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise StunError(f"ERROR-CODE class {cls} number {number} is invalid")
    return cls * 100 + number, value[4:].decode("utf-8", "replace")


# -- whole messages -------------------------------------------------------------------------


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _header(msg: Message, length: int) -> bytes:
    return struct.pack("!HHI", message_type(msg.method, msg.cls), length, MAGIC_COOKIE) + bytes(
        msg.transaction_id
    )


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\x00" * _pad(len(value))


def encode(msg: Message, *, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
    """Serialise ``msg``; optionally append MESSAGE-INTEGRITY then FINGERPRINT."""
    if len(msg.transaction_id) != TRANSACTION_ID_LEN:
        raise ValueError(f"transaction id must be {TRANSACTION_ID_LEN} bytes")
    body = b"".join(_tlv(kind, value) for kind, value in msg.attributes)
    if integrity_key is not None:
        # RFC 8489 section 14.5: the length covers the MESSAGE-INTEGRITY attribute itself.
        head = _header(msg, len(body) + 24)
        mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
        body += _tlv(Attr.MESSAGE_INTEGRITY, mac)
    if fingerprint:
        head = _header(msg, len(body) + 8)
        crc = (binascii.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _tlv(Attr.FINGERPRINT, struct.pack("!I", crc))
    return _header(msg, len(body)) + body


def decode(data: bytes) -> Message:
    """Parse one STUN message; raises :class:`StunError` saying what is wrong."""
    if len(data) < HEADER_LEN:
        raise StunError(f"STUN message of {len(data)} bytes is shorter than its 20-byte header")
    if len(data) > MAX_MESSAGE:
        raise StunError(f"STUN message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    kind, length, cookie = struct.unpack_from("!HHI", data)
    if kind & 0xC000:
        raise StunError("STUN message type has its top two bits set")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"STUN magic cookie is {cookie:#010x}, expected {MAGIC_COOKIE:#010x}")
    if length % 4 or HEADER_LEN + length != len(data):
        raise StunError(f"STUN length field {length} does not match {len(data) - HEADER_LEN} bytes")
    method, cls = split_type(kind)
    msg = Message(method, cls, bytes(data[8:HEADER_LEN]))
    pos = HEADER_LEN
    seen_integrity = False
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError(f"truncated attribute header at offset {pos}")
        attr, alen = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        end = start + alen
        if end > len(data):
            raise StunError(f"attribute {attr:#06x} of {alen} bytes runs past the message end")
        value = bytes(data[start:end])
        if attr == Attr.FINGERPRINT:
            if alen != 4 or end + _pad(alen) != len(data):
                raise StunError("FINGERPRINT must be the last attribute and 4 bytes long")
            head = data[:2] + struct.pack("!H", pos + 8 - HEADER_LEN) + data[4:HEADER_LEN]
            crc = (binascii.crc32(head + data[HEADER_LEN:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if crc != int.from_bytes(value, "big"):
                raise StunError("FINGERPRINT does not match the message")
        elif seen_integrity and attr != Attr.MESSAGE_INTEGRITY_SHA256:
            # RFC 8489 section 14.5: attributes after MESSAGE-INTEGRITY are ignored
            pos = end + _pad(alen)
            continue
        if attr == Attr.MESSAGE_INTEGRITY:
            if alen != 20:
                raise StunError(f"MESSAGE-INTEGRITY of {alen} bytes, expected 20")
            seen_integrity = True
        if attr in _ADDRESS_ATTRS:
            decode_address(value)
        elif attr == Attr.XOR_MAPPED_ADDRESS:
            decode_xor_address(value, msg.transaction_id)
        elif attr == Attr.ERROR_CODE:
            decode_error_code(value)
        msg.attributes.append((attr, value))
        pos = end + _pad(alen)
    return msg


def check_integrity(data: bytes, key: bytes) -> bool:
    """True when ``data`` carries a MESSAGE-INTEGRITY made with ``key`` (short-term credential)."""
    pos = HEADER_LEN
    while pos + 4 <= len(data):
        attr, alen = struct.unpack_from("!HH", data, pos)
        if attr == Attr.MESSAGE_INTEGRITY and alen == 20 and pos + 24 <= len(data):
            head = data[:2] + struct.pack("!H", pos + 24 - HEADER_LEN) + data[4:HEADER_LEN]
            mac = hmac.new(key, head + data[HEADER_LEN:pos], hashlib.sha1).digest()
            return hmac.compare_digest(mac, data[pos + 4 : pos + 24])
        pos += 4 + alen + _pad(alen)
    return False


def short_term_key(password: str) -> bytes:
    """Short-term credential key (RFC 8489 section 9.1.1); our passwords are ASCII tokens."""
    return password.encode("utf-8")
