"""A minimal STUN binding server and client for checking the lab's NAT routers.

Only what the lab needs from RFC 8489: Binding requests are answered with XOR-MAPPED-ADDRESS
and MAPPED-ADDRESS (IPv4); other attributes, including CHANGE-REQUEST, are ignored, so the
answer always comes from the address the request went to. miniupnpd's built-in STUN client
(``ext_perform_stun``) accepts it too. Malformed datagrams raise :class:`StunError` in the
parser and are dropped by the server.

Run a server with ``python -m lab.stun 0.0.0.0:3478`` (inside a lab namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import struct
import sys

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
HEADER = struct.Struct("!HHI12s")
MAX_MESSAGE = 1500


class StunError(ValueError):
    """A datagram that is not a well-formed STUN message of the kind expected."""


def _header(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < HEADER.size:
        raise StunError(f"STUN message of {len(data)} bytes is shorter than its 20-byte header")
    if len(data) > MAX_MESSAGE:
        raise StunError(f"STUN message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    msg_type, length, cookie, txid = HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("STUN message type has its top two bits set")
    if cookie != MAGIC_COOKIE:
        raise StunError(f"STUN magic cookie is {cookie:#x}, not {MAGIC_COOKIE:#x}")
    if length % 4 or HEADER.size + length != len(data):
        raise StunError(f"STUN length field {length} does not match {len(data)} bytes")
    return msg_type, length, txid


def _attributes(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    pos = HEADER.size
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("STUN attribute header is truncated")
        kind, length = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + length > len(data):
            raise StunError(f"STUN attribute {kind:#06x} runs past the message end")
        attrs.setdefault(kind, data[pos : pos + length])
        pos += (length + 3) & ~3
    return attrs


def binding_request(txid: bytes | None = None) -> tuple[bytes, bytes]:
    """A Binding request and its transaction id."""
    txid = txid if txid is not None else os.urandom(12)
    if len(txid) != 12:
        raise StunError("a STUN transaction id is 12 bytes")
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, txid), txid


def parse_request(data: bytes) -> bytes:
    """The transaction id of a Binding request; StunError for anything else."""
    msg_type, _, txid = _header(data)
    if msg_type != BINDING_REQUEST:
        raise StunError(f"STUN message type {msg_type:#06x} is not a Binding request")
    _attributes(data)
    return txid


def binding_response(txid: bytes, addr: tuple[str, int]) -> bytes:
    """A Binding success response telling the client it was seen from ``addr``."""
    ip = ipaddress.IPv4Address(addr[0]).packed
    port = addr[1]
    xport = port ^ (MAGIC_COOKIE >> 16)
    xip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC_COOKIE), strict=True))
    body = struct.pack("!HHBBH4s", ATTR_XOR_MAPPED_ADDRESS, 8, 0, 1, xport, xip)
    body += struct.pack("!HHBBH4s", ATTR_MAPPED_ADDRESS, 8, 0, 1, port, ip)
    return HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, txid) + body


def parse_response(data: bytes, txid: bytes) -> tuple[str, int]:
    """The mapped address in a Binding success response to transaction ``txid``."""
    msg_type, _, got = _header(data)
    if msg_type != BINDING_SUCCESS:
        raise StunError(f"STUN message type {msg_type:#06x} is not a Binding success")
    if got != txid:
        raise StunError("STUN response belongs to another transaction")
    attrs = _attributes(data)
    if (value := attrs.get(ATTR_XOR_MAPPED_ADDRESS)) is not None:
        xor = True
    elif (value := attrs.get(ATTR_MAPPED_ADDRESS)) is not None:
        xor = False
    else:
        raise StunError("STUN response carries no (XOR-)MAPPED-ADDRESS")
    if len(value) != 8 or value[1] != 1:
        raise StunError("STUN mapped address is not an 8-byte IPv4 address")
    port, ip = struct.unpack_from("!H4s", value, 2)
    if xor:
        port ^= MAGIC_COOKIE >> 16
        ip = bytes(a ^ b for a, b in zip(ip, struct.pack("!I", MAGIC_COOKIE), strict=True))
    return str(ipaddress.IPv4Address(ip)), port


def query(sock: socket.socket, server: tuple[str, int], timeout: float = 2.0,
          tries: int = 3) -> tuple[str, int]:  # fmt: skip
    """Ask ``server`` how it sees ``sock``; raises TimeoutError when no answer comes."""
    request, txid = binding_request()
    old = sock.gettimeout()
    sock.settimeout(timeout / tries)
    try:
        for _ in range(tries):
            sock.sendto(request, server)
            try:
                while True:
                    data, _ = sock.recvfrom(2048)
                    try:
                        return parse_response(data, txid)
                    except StunError:
                        continue
            except TimeoutError:
                continue
        raise TimeoutError(f"no STUN answer from {server[0]}:{server[1]}")
    finally:
        sock.settimeout(old)


def serve(sock: socket.socket) -> None:
    """Answer Binding requests on ``sock`` forever; drop everything else."""
    while True:
        data, addr = sock.recvfrom(2048)
        try:
            txid = parse_request(data)
        except StunError:
            continue
        sock.sendto(binding_response(txid, addr), addr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.stun", description=__doc__)
    parser.add_argument("bind", help="HOST:PORT to answer on, e.g. 0.0.0.0:3478")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
