"""NAT-PMP (RFC 6886) and PCP (RFC 6887) messages for UDP port mappings, without I/O.

Both speak to the gateway's UDP port 5351. NAT-PMP: a 2-byte external-address request and a
12-byte UDP map request (lifetime 0 deletes). PCP: a 24-byte common header carrying the client
address as IPv4-mapped IPv6, then the MAP opcode's 36 bytes with a 96-bit nonce that the
answer must echo. Parsers raise :class:`PortMapError` naming what is wrong; a result code
other than success becomes an error with the RFC's name for it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from node.transport.nat.errors import PortMapError

PORT = 5351
NATPMP_VERSION = 0
PCP_VERSION = 2
PROTO_UDP = 17

# RFC 6886 section 3.5
NATPMP_RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized/refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}
# RFC 6887 section 7.4
PCP_RESULTS = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
PCP_OP_ANNOUNCE = 0
PCP_OP_MAP = 1


@dataclass(frozen=True, slots=True)
class Mapping:
    """A mapping the router granted."""

    protocol: str
    """``pcp``, ``nat-pmp`` or ``upnp``."""
    internal_port: int
    external_port: int
    external_ip: str | None
    lifetime: int
    """Seconds the router keeps it (renew before)."""
    epoch: int = 0
    """Router's seconds-since-start epoch (a drop means it rebooted and lost mappings)."""


# -- NAT-PMP --------------------------------------------------------------------------------


def natpmp_address_request() -> bytes:
    return struct.pack("!BB", NATPMP_VERSION, 0)


def natpmp_map_request(internal_port: int, external_port: int, lifetime: int) -> bytes:
    return struct.pack("!BBHHHI", NATPMP_VERSION, 1, 0, internal_port, external_port, lifetime)


def _natpmp_head(data: bytes, opcode: int, size: int) -> tuple[int, int]:
    if len(data) < 4:
        raise PortMapError(f"NAT-PMP answer of {len(data)} bytes is too short")
    version, op, result = struct.unpack_from("!BBH", data)
    if version != NATPMP_VERSION:
        raise PortMapError(f"NAT-PMP answer with version {version}")
    if op != 128 + opcode:
        raise PortMapError(f"NAT-PMP answer opcode {op}, expected {128 + opcode}")
    if result != 0:
        name = NATPMP_RESULTS.get(result, f"result {result}")
        raise PortMapError(f"router refused NAT-PMP request: {name}")
    if len(data) < size:
        raise PortMapError(f"NAT-PMP answer of {len(data)} bytes, expected {size}")
    (epoch,) = struct.unpack_from("!I", data, 4)
    return result, epoch


def parse_natpmp_address(data: bytes) -> tuple[str, int]:
    """(external IPv4 address, epoch) from an external-address answer."""
    _, epoch = _natpmp_head(data, 0, 12)
    return str(ipaddress.IPv4Address(data[8:12])), epoch


def parse_natpmp_map(data: bytes, internal_port: int) -> Mapping:
    _, epoch = _natpmp_head(data, 1, 16)
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    if internal != internal_port:
        raise PortMapError(f"NAT-PMP answer for port {internal}, asked for {internal_port}")
    return Mapping("nat-pmp", internal, external, None, lifetime, epoch)


# -- PCP ------------------------------------------------------------------------------------


def _v6(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{addr}").packed
    return addr.packed


def _from_v6(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def pcp_map_request(
    client_ip: str,
    nonce: bytes,
    internal_port: int,
    external_port: int,
    lifetime: int,
    external_ip: str = "0.0.0.0",
) -> bytes:
    if len(nonce) != 12:
        raise ValueError("PCP nonce is 12 bytes")
    head = struct.pack("!BBHI", PCP_VERSION, PCP_OP_MAP, 0, lifetime) + _v6(client_ip)
    body = nonce + struct.pack("!B3xHH", PROTO_UDP, internal_port, external_port)
    return head + body + _v6(external_ip)


def parse_pcp_map(data: bytes, nonce: bytes, internal_port: int) -> Mapping:
    if len(data) < 24:
        raise PortMapError(f"PCP answer of {len(data)} bytes is too short")
    version, op, result, lifetime, epoch = struct.unpack_from("!BBxBII", data)
    if version != PCP_VERSION:
        raise PortMapError(f"PCP answer with version {version} (the router may speak NAT-PMP)")
    if op != 0x80 | PCP_OP_MAP:
        raise PortMapError(f"PCP answer opcode {op:#x}, expected {0x80 | PCP_OP_MAP:#x}")
    if result != 0:
        name = PCP_RESULTS.get(result, f"result {result}")
        raise PortMapError(f"router refused PCP MAP: {name}")
    if len(data) < 60:
        raise PortMapError(f"PCP MAP answer of {len(data)} bytes, expected at least 60")
    if data[24:36] != nonce:
        raise PortMapError("PCP answer nonce does not match the request")
    proto, internal, external = struct.unpack_from("!B3xHH", data, 36)
    if proto != PROTO_UDP or internal != internal_port:
        raise PortMapError(f"PCP answer for protocol {proto} port {internal}")
    return Mapping("pcp", internal, external, _from_v6(data[44:60]), lifetime, epoch)
