"""Port mapping with PCP, NAT-PMP and UPnP-IGD against miniupnpd as the lab's home router."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import Lab
from node.transport.nat import pcp
from node.transport.nat.errors import PortMapError
from node.transport.nat.portmap import PortMapper, default_gateway
from tests.lab.conftest import require_lab
from tests.support import require_binary

NONCE = bytes(range(12))


def test_pcp_map_request_layout() -> None:
    data = pcp.pcp_map_request("10.1.0.2", NONCE, 7700, 7700, 3600)
    assert len(data) == 60
    assert data[:4] == b"\x02\x01\x00\x00"
    assert data[8:24] == bytes(10) + b"\xff\xff" + bytes([10, 1, 0, 2])
    assert data[24:36] == NONCE
    assert data[36] == 17


def test_pcp_answer_parsing() -> None:
    head = struct.pack("!BBxBII", 2, 0x81, 0, 1800, 42) + bytes(12)
    body = NONCE + struct.pack("!B3xHH", 17, 7700, 40001)
    answer = head + body + bytes(10) + b"\xff\xff" + bytes([198, 18, 1, 2])
    mapping = pcp.parse_pcp_map(answer, NONCE, 7700)
    assert (mapping.external_ip, mapping.external_port, mapping.lifetime) == (
        "198.18.1.2",
        40001,
        1800,
    )
    with pytest.raises(PortMapError, match="nonce"):
        pcp.parse_pcp_map(answer, bytes(12), 7700)
    refused = bytearray(answer)
    refused[3] = 8
    with pytest.raises(PortMapError, match="NO_RESOURCES"):
        pcp.parse_pcp_map(bytes(refused), NONCE, 7700)


def test_natpmp_answer_parsing() -> None:
    addr = struct.pack("!BBHI", 0, 128, 0, 7) + bytes([198, 18, 1, 2])
    assert pcp.parse_natpmp_address(addr) == ("198.18.1.2", 7)
    mapped = struct.pack("!BBHIHHI", 0, 129, 0, 7, 7700, 7701, 600)
    assert pcp.parse_natpmp_map(mapped, 7700).external_port == 7701
    with pytest.raises(PortMapError, match="not authorized"):
        pcp.parse_natpmp_map(struct.pack("!BBHIHHI", 0, 129, 2, 7, 7700, 0, 0), 7700)


@given(st.binary(max_size=80))
def test_fuzz_router_answers(data: bytes) -> None:
    for parse in (
        lambda d: pcp.parse_pcp_map(d, NONCE, 7700),
        lambda d: pcp.parse_natpmp_map(d, 7700),
        pcp.parse_natpmp_address,
    ):
        try:
            mapping = parse(data)
        except PortMapError:
            continue
        assert mapping is not None


def test_default_gateway_from_route_table(tmp_path: pytest.TempPathFactory) -> None:
    table = tmp_path / "route"  # type: ignore[operator]
    table.write_text(
        "Iface\tDestination\tGateway\tFlags\n"
        "eth0\t0001000A\t00000000\t0001\n"
        "eth0\t00000000\t0100010A\t0003\n"
    )
    assert default_gateway(str(table)) == "10.1.0.1"


def _reaches(outsider_sock: socket.socket, target: tuple[str, int], inside: socket.socket) -> bool:
    inside.settimeout(0.5)
    for _ in range(3):
        outsider_sock.sendto(b"probe", target)
        try:
            data, _ = inside.recvfrom(100)
        except OSError:
            continue
        return data == b"probe"
    return False


@pytest.mark.parametrize("protocol", ["pcp", "nat-pmp", "upnp"])
async def test_mapping_against_miniupnpd(protocol: str) -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    with Lab() as lab:
        router = lab.router("home", "port-restricted-cone", upnp=True)
        host = router.host("h")
        outsider = lab.public_host("outsider")
        service = host.socket()
        service.bind(("0.0.0.0", 0))
        port = service.getsockname()[1]
        from_outside = outsider.socket()
        # the router drops unsolicited packets before the mapping exists
        assert not _reaches(from_outside, (router.wan_addr, port), service)
        with host.entered():
            mapper = PortMapper(port, 600, gateway=router.lan_gateway, protocols=(protocol,))
            mapping = await asyncio.wait_for(mapper.start(), 30)
        assert mapping.protocol == protocol
        assert mapper.external == (router.wan_addr, mapping.external_port)
        assert router.upnp is not None
        assert f":{port}" in router.upnp.rules()
        assert _reaches(from_outside, mapper.external, service)
        with host.entered():
            await asyncio.wait_for(mapper.close(), 30)
        assert f":{port}" not in router.upnp.rules()
        router.flush_conntrack()
        assert not _reaches(from_outside, (router.wan_addr, mapping.external_port), service)
