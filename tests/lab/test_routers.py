"""Home routers: each NAT class's mapping and filtering seen from two STUN servers, miniupnpd
mapping ports, conntrack timeouts, random loss, emulated WAN and LAN links."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
import urllib.request
from dataclasses import dataclass

import pytest

from lab import Lab, LinkSpec, Namespace, Nat, stun
from lab.routers import ruleset
from tests.lab.conftest import require_lab
from tests.support import require_binary

IP_RECVERR = 11  # Linux <linux/in.h>: queue ICMP errors for the socket


def received(sock: socket.socket, timeout: float = 0.5) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recvfrom(2048)[0]
    except TimeoutError:
        return None


def start_stun(ns: Namespace, port: int = 3478) -> None:
    proc = ns.python(f"0.0.0.0:{port}", module="lab.stun", stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


@dataclass
class Behaviour:
    mapping_1: tuple[str, int]
    mapping_2: tuple[str, int]
    from_other_port: bool
    from_other_host: bool


def observe(lab: Lab, nat: Nat) -> tuple[Behaviour, str]:
    """Map one inside socket through two STUN servers, then probe it from a new port of the
    first server and from a host it never contacted (RFC 4787 / 5780 style)."""
    s1, s2, s3 = lab.public_host("s1"), lab.public_host("s2"), lab.public_host("s3")
    start_stun(s1)
    start_stun(s2)
    router = lab.router("home", nat)
    inside = router.host("h").socket()
    inside.bind(("0.0.0.0", 40000))
    m1 = stun.query(inside, (s1.addr, 3478))
    m2 = stun.query(inside, (s2.addr, 3478))
    other_port = s1.socket()
    other_port.bind((s1.addr, 3479))
    other_port.sendto(b"from s1:3479", m1)
    got_port = received(inside)
    s3.socket().sendto(b"from s3", m1)
    got_host = received(inside)
    return Behaviour(m1, m2, got_port is not None, got_host is not None), router.wan_addr


EXPECTED = {
    # class: (endpoint-independent mapping, other port of a contacted host, unknown host)
    Nat.FULL_CONE: (True, True, True),
    Nat.RESTRICTED_CONE: (True, True, False),
    Nat.PORT_RESTRICTED_CONE: (True, False, False),
    Nat.SYMMETRIC: (False, False, False),
}


@pytest.mark.parametrize("nat", list(Nat), ids=lambda n: n.value)
def test_nat_class_mapping_and_filtering(lab: Lab, nat: Nat) -> None:
    seen, wan = observe(lab, nat)
    assert seen.mapping_1[0] == seen.mapping_2[0] == wan
    eim, other_port, other_host = EXPECTED[nat]
    assert (seen.mapping_1 == seen.mapping_2) is eim
    if eim:
        assert seen.mapping_1[1] == 40000  # masquerade keeps the port when it is free
    assert seen.from_other_port is other_port
    assert seen.from_other_host is other_host


def test_lan_hosts_reach_each_other_and_the_internet_but_not_the_reverse(lab: Lab) -> None:
    server = lab.public_host("server")
    router = lab.router("home", "port-restricted-cone")
    a, b = router.host("a"), router.host("b")
    assert a.addr == "10.1.0.2" and b.addr == "10.1.0.3"
    listen_b = b.socket()
    listen_b.bind((b.addr, 5000))
    a.socket().sendto(b"lan", (b.addr, 5000))
    data = received(listen_b)
    assert data == b"lan"
    listen_s = server.socket()
    listen_s.bind((server.addr, 5000))
    a.socket().sendto(b"out", (server.addr, 5000))
    assert received(listen_s) == b"out"
    probe = server.socket()
    probe.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
    probe.connect((a.addr, 5000))
    probe.send(b"in")
    with pytest.raises(OSError):
        probe.recv(10)  # ICMP net unreachable from the core: private space is not routed


def test_conntrack_timeout_closes_an_idle_binding(lab: Lab) -> None:
    server = lab.public_host("server")
    router = lab.router("home", "port-restricted-cone", udp_timeout=1, udp_stream_timeout=1)
    assert router.ns.read_sysctl("net.netfilter.nf_conntrack_udp_timeout") == "1"
    inside = router.host("h").socket()
    inside.bind(("0.0.0.0", 40000))
    outside = server.socket()
    outside.bind((server.addr, 6000))
    inside.sendto(b"open", (server.addr, 6000))
    outside.settimeout(2)
    _, mapped = outside.recvfrom(100)
    outside.sendto(b"reply", mapped)
    assert received(inside) == b"reply"
    time.sleep(2.5)  # idle past the timeout: the router forgets the binding
    outside.sendto(b"late", mapped)
    assert received(inside) is None


def test_random_loss_in_the_router(lab: Lab) -> None:
    server = lab.public_host("server")
    router = lab.router("home", "full-cone", loss_percent=30)
    sender = router.host("h").socket()
    sink = server.socket()
    sink.bind((server.addr, 6000))
    for i in range(400):
        sender.sendto(i.to_bytes(2, "big"), (server.addr, 6000))
    got = 0
    while received(sink, 0.3) is not None:
        got += 1
    assert 200 < got < 340
    router.set_loss(0)
    for i in range(100):
        sender.sendto(i.to_bytes(2, "big"), (server.addr, 6000))
    got = 0
    while received(sink, 0.3) is not None:
        got += 1
    assert got == 100


def test_emulated_wan_and_lan_links(lab: Lab) -> None:
    server = lab.public_host("server")
    router = lab.router("home", "full-cone", wan_emulate=LinkSpec(delay_ms=10))
    host = router.host("h", emulate=LinkSpec(delay_ms=5))
    assert host.addr == "10.1.1.2"
    sink = server.socket()
    sink.bind((server.addr, 6000))
    sock = host.socket()
    sent = time.monotonic()
    sock.sendto(b"x", (server.addr, 6000))
    assert received(sink, 2) == b"x"
    assert time.monotonic() - sent >= 0.015  # both one-way delays were applied


def test_ruleset_rejects_bad_loss() -> None:
    from lab import LabError

    with pytest.raises(LabError, match="loss_percent"):
        ruleset(Nat.SYMMETRIC, "10.1.0.0/16", loss_percent=101)


# -- miniupnpd -----------------------------------------------------------------------------


def port_control(sock: socket.socket, gateway: str, request: bytes) -> bytes:
    """Send a NAT-PMP or PCP request to the gateway's port 5351; return its answer."""
    sock.sendto(request, (gateway, 5351))
    data = received(sock, 2)
    assert data is not None, "no NAT-PMP/PCP answer from miniupnpd"
    return data


def test_miniupnpd_maps_a_port_by_natpmp() -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    with Lab() as lab:
        router = lab.router("home", "port-restricted-cone", upnp=True)
        host = router.host("h")
        outsider = lab.public_host("outsider")
        service = host.socket()
        service.bind(("0.0.0.0", 40000))
        control = host.socket()
        # Public address request (RFC 6886 section 3.2).
        reply = port_control(control, router.lan_gateway, struct.pack("!BB", 0, 0))
        version, op, result, _epoch, ext = struct.unpack("!BBHI4s", reply)
        assert (version, op, result) == (0, 128, 0)
        assert socket.inet_ntoa(ext) == router.wan_addr

        # Without a mapping, the router drops unsolicited packets.
        outsider.socket().sendto(b"early", (router.wan_addr, 41000))
        assert received(service) is None

        # UDP mapping 41000 -> 40000 for 600 s (RFC 6886 section 3.3).
        request = struct.pack("!BBHHHI", 0, 1, 0, 40000, 41000, 600)
        _, op, result, _, internal, external, lifetime = struct.unpack(
            "!BBHIHHI", port_control(control, router.lan_gateway, request)
        )
        assert (op, result, internal, external) == (129, 0, 40000, 41000)
        assert 0 < lifetime <= 600
        assert "dnat ip to 10.1.0.2:40000" in router.upnp.rules() if router.upnp else False
        outsider.socket().sendto(b"mapped", (router.wan_addr, 41000))
        assert received(service) == b"mapped"

        # Lifetime 0 deletes the mapping.
        request = struct.pack("!BBHHHI", 0, 1, 0, 40000, 0, 0)
        assert struct.unpack("!BBH", port_control(control, router.lan_gateway, request)[:4])[2] == 0
        router.flush_conntrack()
        outsider.socket().sendto(b"after", (router.wan_addr, 41000))
        assert received(service) is None


SOAP = """<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>
<u:AddPortMapping xmlns:u="{service}"><NewRemoteHost></NewRemoteHost>
<NewExternalPort>{external}</NewExternalPort><NewProtocol>UDP</NewProtocol>
<NewInternalPort>{internal}</NewInternalPort><NewInternalClient>{client}</NewInternalClient>
<NewEnabled>1</NewEnabled><NewPortMappingDescription>lab</NewPortMappingDescription>
<NewLeaseDuration>600</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>"""


def test_miniupnpd_answers_ssdp_and_maps_a_port_by_upnp_igd() -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    with Lab() as lab:
        router = lab.router("home", "symmetric", upnp=True)
        host = router.host("h")
        outsider = lab.public_host("outsider")
        search = host.socket()
        search.sendto(
            b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\n'
            b"MX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n",
            ("239.255.255.250", 1900),
        )
        answer = received(search, 3)
        assert answer is not None, "no SSDP answer on the LAN"
        match = re.search(rb"(?im)^location:\s*(\S+)", answer)
        assert match is not None
        location = match.group(1).decode()
        assert location.startswith(f"http://{router.lan_gateway}:")
        with host.entered():
            description = urllib.request.urlopen(location, timeout=5).read().decode()
        service = re.search(
            r"<serviceType>(urn:schemas-upnp-org:service:WANIPConnection:\d)</serviceType>"
            r".*?<controlURL>([^<]+)</controlURL>",
            description,
            re.S,
        )
        assert service is not None
        kind, control = service.groups()
        body = SOAP.format(service=kind, external=42000, internal=40001, client=host.addr)
        request = urllib.request.Request(
            location.split("/rootDesc")[0] + control,
            data=body.encode(),
            headers={
                "Content-Type": 'text/xml; charset="utf-8"',
                "SOAPAction": f'"{kind}#AddPortMapping"',
            },
        )
        with host.entered():
            try:
                urllib.request.urlopen(request, timeout=5)
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"AddPortMapping failed: {exc.read().decode()}") from exc
        service_sock = host.socket()
        service_sock.bind(("0.0.0.0", 40001))
        outsider.socket().sendto(b"via igd", (router.wan_addr, 42000))
        assert received(service_sock) == b"via igd"


def test_miniupnpd_maps_a_port_by_pcp() -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    with Lab() as lab:
        router = lab.router("home", "restricted-cone", upnp=True)
        host = router.host("h")
        outsider = lab.public_host("outsider")
        service = host.socket()
        service.bind(("0.0.0.0", 40002))
        control = host.socket()
        mapped_client = b"\0" * 10 + b"\xff\xff" + socket.inet_aton(host.addr)
        nonce = bytes(range(12))
        # RFC 6887 section 7.1 request header, section 11.1 MAP opcode (UDP = 17).
        request = struct.pack("!BBHI16s", 2, 1, 0, 600, mapped_client)
        request += struct.pack("!12sB3xHH16s", nonce, 17, 40002, 43000, bytes(16))
        reply = port_control(control, router.lan_gateway, request)
        version, op, result, lifetime = struct.unpack_from("!BBxBI", reply)
        assert (version, op, result) == (2, 0x81, 0)
        assert 0 < lifetime <= 600
        got_nonce, proto, internal, external, ext_ip = struct.unpack_from("!12sB3xHH16s", reply, 24)
        assert (got_nonce, proto, internal) == (nonce, 17, 40002)
        assert socket.inet_ntoa(ext_ip[12:]) == router.wan_addr
        outsider.socket().sendto(b"via pcp", (router.wan_addr, external))
        assert received(service) == b"via pcp"
