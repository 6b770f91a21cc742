"""NAT behaviour discovery: the classification table and a real run against coturn."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.transport.nat.aio import open_stun_socket
from node.transport.nat.discovery import (
    Filtering,
    Mapping,
    NatClass,
    classify_mapping,
    discover,
    nat_class,
)
from node.transport.nat.errors import NatError
from node.transport.nat.stun import Address
from node.transport.nat.stun_server import StunServer
from tests.nat.coturn import run_coturn

LOCAL = ("10.0.0.2", 5000)
A = ("203.0.113.1", 5000)
B = ("203.0.113.1", 6000)
C = ("203.0.113.1", 7000)


@pytest.mark.parametrize(
    ("first", "second", "third", "expected"),
    [
        (LOCAL, LOCAL, None, Mapping.NONE),
        (A, A, None, Mapping.ENDPOINT_INDEPENDENT),
        (A, B, B, Mapping.ADDRESS_DEPENDENT),
        (A, B, C, Mapping.ADDRESS_AND_PORT_DEPENDENT),
        (A, B, None, Mapping.ADDRESS_AND_PORT_DEPENDENT),
    ],
)
def test_classify_mapping(
    first: Address, second: Address, third: Address | None, expected: Mapping
) -> None:
    assert classify_mapping(LOCAL, first, second, third) == expected


def test_wildcard_bind_uses_local_ips() -> None:
    here = ("0.0.0.0", 5000)
    assert classify_mapping(here, LOCAL, LOCAL, None, frozenset({"10.0.0.2"})) == Mapping.NONE
    assert classify_mapping(here, LOCAL, LOCAL, None) == Mapping.ENDPOINT_INDEPENDENT


@pytest.mark.parametrize(
    ("mapping", "filtering", "expected"),
    [
        (Mapping.NONE, Filtering.ENDPOINT_INDEPENDENT, NatClass.PUBLIC),
        (Mapping.NONE, Filtering.ADDRESS_AND_PORT_DEPENDENT, NatClass.FIREWALLED),
        (Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, NatClass.FULL_CONE),
        (Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, NatClass.RESTRICTED_CONE),
        (
            Mapping.ENDPOINT_INDEPENDENT,
            Filtering.ADDRESS_AND_PORT_DEPENDENT,
            NatClass.PORT_RESTRICTED_CONE,
        ),
        (Mapping.ENDPOINT_INDEPENDENT, Filtering.UNKNOWN, NatClass.CONE),
        (Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT, NatClass.SYMMETRIC),
        (Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.UNKNOWN, NatClass.SYMMETRIC),
    ],
)
def test_nat_class_names(mapping: Mapping, filtering: Filtering, expected: NatClass) -> None:
    assert nat_class(mapping, filtering) == expected


async def test_discovery_against_coturn_without_nat(tmp_path: Path) -> None:
    with run_coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as coturn:
        sock = await open_stun_socket(("127.0.0.1", 0))
        try:
            report = await discover(sock.agent, coturn.address)
        finally:
            sock.close()
    assert report.method == "rfc5780"
    assert report.mapping == Mapping.NONE
    assert report.filtering == Filtering.ENDPOINT_INDEPENDENT
    assert report.nat_class == NatClass.PUBLIC
    assert report.public_address == sock.local


async def test_discovery_with_two_plain_servers() -> None:
    one = await open_stun_socket(("127.0.0.1", 0), server=StunServer())
    two = await open_stun_socket(("127.0.0.2", 0), server=StunServer())
    sock = await open_stun_socket(("127.0.0.1", 0))
    try:
        with pytest.raises(NatError, match="second STUN server"):
            await discover(sock.agent, one.local)
        report = await discover(sock.agent, one.local, two.local)
    finally:
        for s in (one, two, sock):
            s.close()
    assert report.method == "two-servers"
    assert (report.mapping, report.nat_class) == (Mapping.NONE, NatClass.PUBLIC)
