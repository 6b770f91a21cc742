"""NAT behaviour discovery against coturn (RFC 5780, two addresses) behind each lab router."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Lab
from node.transport.nat.aio import open_stun_socket
from node.transport.nat.discovery import Filtering, Mapping, NatClass, discover
from tests.lab.conftest import require_lab
from tests.nat.coturn import run_coturn

EXPECTED = {
    "public": (Mapping.NONE, Filtering.ENDPOINT_INDEPENDENT, NatClass.PUBLIC),
    "full-cone": (
        Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT, NatClass.FULL_CONE,
    ),
    "restricted-cone": (
        Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT, NatClass.RESTRICTED_CONE,
    ),
    "port-restricted-cone": (
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        NatClass.PORT_RESTRICTED_CONE,
    ),
    "symmetric": (
        Mapping.ADDRESS_AND_PORT_DEPENDENT,
        Filtering.ADDRESS_AND_PORT_DEPENDENT,
        NatClass.SYMMETRIC,
    ),
}  # fmt: skip


@pytest.mark.slow
async def test_each_router_class_is_discovered(tmp_path: Path) -> None:
    require_lab()
    with Lab() as lab:
        stun_ns = lab.public_host("stun5780")
        second = stun_ns.addr.rsplit(".", 1)[0] + ".3"
        stun_ns.ip("addr", "add", f"{second}/24", "dev", "eth0")
        hosts = {"public": (lab.public_host("pub"), None)}
        for kind in EXPECTED:
            if kind != "public":
                router = lab.router(kind.replace("-", "")[:10], kind)
                hosts[kind] = (router.host(f"h{len(hosts)}"), router)
        with run_coturn(tmp_path, (stun_ns.addr, second), netns=stun_ns.netns) as coturn:
            seen = {}
            for kind, (ns, router) in hosts.items():
                sock = ns.socket()
                sock.bind(("0.0.0.0", 0))
                agent = await open_stun_socket(sock=sock)
                try:
                    report = await discover(
                        agent.agent, coturn.address, local_ips=frozenset(ns.addresses)
                    )
                finally:
                    agent.close()
                seen[kind] = (report.mapping, report.filtering, report.nat_class)
                if router is not None:
                    assert report.public_address is not None
                    assert report.public_address[0] == router.wan_addr
        assert seen == EXPECTED
