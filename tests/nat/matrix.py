"""The NAT pairing matrix in the lab: real endpoints behind real nftables NAT routers.

One lab holds a public relay node (which also serves STUN), and for each kind of network a
place to put a peer: a public host, or a host behind a router of each NAT class, or behind a
port-restricted router running miniupnpd (the peer maps its port by PCP/NAT-PMP/UPnP). A cell
builds two fresh peers (new sockets, so new NAT bindings), connects the first to the second
with :class:`Traversal` (direct, or relayed then upgraded by hole punching) and sends data
both ways. Used by ``tests/nat/test_matrix.py`` (one try per cell) and ``bench/nat.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from lab import Lab
from lab.netns import Namespace
from lab.routers import Router
from node.identity import Identity
from node.transport.endpoint import Connection, Endpoint, Stream
from node.transport.nat.aio import StunAgent
from node.transport.nat.portmap import PortMapper
from node.transport.nat.relay import RelayClient, RelayLimits, RelayServer
from node.transport.nat.stun import Address
from node.transport.nat.stun_server import StunServer
from node.transport.nat.traversal import Traversal, predicted

KINDS = ("public", "full-cone", "restricted-cone", "port-restricted-cone", "symmetric", "upnp")
ECHO = "echo"


def expected_path(a: str, b: str) -> str:
    """Where a direct path must be found: either side reachable unsolicited (public, full
    cone, port-mapped), both with endpoint-independent mappings, or a symmetric mapping
    facing a filter that only checks the address. Symmetric against symmetric or against a
    port-restricted filter has no path without a relay."""
    easy = {"public", "full-cone", "upnp"}
    if a in easy or b in easy:
        return "direct"
    pair = {a, b}
    if "symmetric" not in pair:
        return "direct"
    if pair == {"symmetric", "restricted-cone"}:
        return "direct"
    return "relayed"


@dataclass
class Peer:
    kind: str
    ns: Namespace
    endpoint: Endpoint
    traversal: Traversal
    relay_conns: list[Connection]
    addresses: list[Address]
    nat_class: str
    mapper: PortMapper | None = None
    received: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)

    async def close(self) -> None:
        if self.mapper is not None:
            with self.ns.entered(), contextlib.suppress(Exception):
                await self.mapper.close()
        await self.traversal.relays.close()
        await self.endpoint.close()


class Matrix:
    """The lab networks of the matrix and a relay; build once, run many cells."""

    def __init__(self, lab: Lab, *, udp_timeout: int = 30) -> None:
        self.lab = lab
        self.udp_timeout = udp_timeout
        self.places: dict[str, list[tuple[Namespace, Router | None]]] = {}
        self.relays: list[tuple[Namespace, Endpoint, RelayServer]] = []

    def place(self, kind: str, slot: int) -> tuple[Namespace, Router | None]:
        """A host of ``kind``; slot 0 and 1 sit behind different routers of that kind."""
        places = self.places.setdefault(kind, [])
        while len(places) <= slot:
            n = len(places)
            if kind == "public":
                places.append((self.lab.public_host(f"pub{n}"), None))
                continue
            nat = "port-restricted-cone" if kind == "upnp" else kind
            short = {"full-cone": "fc", "restricted-cone": "rc", "port-restricted-cone": "prc",
                     "symmetric": "sym", "upnp": "upnp"}[kind]  # fmt: skip
            router = self.lab.router(
                f"r{short}{n}", nat, upnp=kind == "upnp", udp_timeout=self.udp_timeout,
                udp_stream_timeout=self.udp_timeout,
            )  # fmt: skip
            places.append((router.host(f"h{short}{n}"), router))
        return places[slot]

    async def start_relay(self, limits: RelayLimits | None = None) -> Address:
        """Another public relay node (it also serves STUN); peers made later reserve on all."""
        ns = self.lab.public_host(f"relay{len(self.relays)}")
        sock = ns.socket()
        sock.bind(("0.0.0.0", 7700))
        ep = Endpoint(Identity.generate())
        await ep.bind(sock=sock)
        agent = StunAgent(lambda d, a, s: ep.send_raw(d, a), ep.local_address, server=StunServer())
        ep.stun_handler = agent.datagram_received
        server = RelayServer(ep, limits or RelayLimits())
        server.attach()
        self.relays.append((ns, ep, server))
        return ns.addr, 7700

    @property
    def relay_address(self) -> Address:
        return self.relays[0][0].addr, 7700

    async def stop_relay(self, index: int | None = None) -> None:
        """Stop one relay (all when ``index`` is None)."""
        for i, (_, ep, _) in enumerate(self.relays):
            if index is None or i == index:
                await ep.close()

    async def peer(self, kind: str, slot: int) -> Peer:
        ns, router = self.place(kind, slot)
        sock = ns.socket()
        sock.bind(("0.0.0.0", 0))
        ep = Endpoint(Identity.generate())
        await ep.bind(sock=sock)
        port = ep.local_address[1]
        credentials: dict[str, bytes] = {}
        stun = StunAgent(
            lambda d, a, s: ep.send_raw(d, a),
            ep.local_address,
            server=StunServer(credentials=credentials.get),
        )
        ep.stun_handler = stun.datagram_received
        mapped = (await stun.binding(self.relay_address)).mapped
        mapper = None
        addresses = [mapped]
        nat_class = "public" if kind == "public" else kind
        if kind == "upnp":
            assert router is not None
            with ns.entered():
                mapper = PortMapper(port, 600, gateway=router.lan_gateway)
                await mapper.start()
            assert mapper.external is not None
            addresses = [mapper.external, mapped]
            nat_class = "full-cone"  # reachable unsolicited at the mapped port

        def candidates() -> list[Address]:
            local = (ns.addr, port)
            out = [*addresses, local]
            if kind == "symmetric":
                out += predicted(mapped)
            return out

        relay_client = RelayClient(ep, sock_factory=ns.socket)
        traversal = Traversal(ep, stun, relay_client, candidates, credentials)
        traversal.attach()
        relay_conns = []
        for relay_ns, _, _ in self.relays:
            relay_conn = await ep.connect((relay_ns.addr, 7700), timeout=5.0)
            await relay_client.reserve(relay_conn)
            relay_conns.append(relay_conn)
        peer = Peer(kind, ns, ep, traversal, relay_conns, addresses, nat_class, mapper)

        async def echo(conn: Connection, stream: Stream) -> None:
            data = await stream.read(100)
            peer.received.put_nowait(data)
            stream.write(b"re:" + data)
            await stream.drain()
            stream.write_eof()

        ep.set_handler(ECHO, echo)
        return peer


@dataclass
class CellResult:
    a: str
    b: str
    path: str
    ttfb: float
    ok: bool
    error: str = ""


async def exchange(conn: Connection, payload: bytes, timeout: float = 10.0) -> bytes:
    stream = await conn.open_stream(ECHO)
    stream.write(payload)
    stream.write_eof()
    await stream.drain()
    return await asyncio.wait_for(stream.read(), timeout)


async def run_cell(matrix: Matrix, a_kind: str, b_kind: str, settle: float = 8.0) -> CellResult:
    """Connect a fresh peer of ``a_kind`` to one of ``b_kind``; data both ways; path kind."""
    a = await matrix.peer(a_kind, 0)
    b = await matrix.peer(b_kind, 1)
    try:
        began = time.monotonic()
        conn = await a.traversal.connect(
            b.endpoint.identity.public_key, b.addresses, b.nat_class, a.relay_conns
        )
        first = await exchange(conn, b"hello")
        ttfb = time.monotonic() - began
        if first != b"re:hello":
            return CellResult(a_kind, b_kind, "", ttfb, False, f"echo said {first!r}")
        path = a.traversal.path_of(conn)
        if path == "relayed":
            # wait for the upgrade by hole punching to finish (or give up)
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline and a.traversal.path_of(conn) == "relayed":
                if (
                    b.endpoint.identity.node_id not in a.traversal.upgraded
                    and (a.traversal.counters["punch_failed"])
                ):
                    break
                await asyncio.sleep(0.1)
            path = a.traversal.path_of(conn)
        # data both ways on the final path: a -> b and b -> a
        back = await exchange(conn, b"after")
        b_conn = next(c for c in b.endpoint.connections if c.peer_id == a.endpoint.identity.node_id)
        forth = await exchange(b_conn, b"from-b")
        ok = back == b"re:after" and forth == b"re:from-b"
        return CellResult(a_kind, b_kind, path, ttfb, ok)
    except Exception as exc:
        return CellResult(a_kind, b_kind, "", 0.0, False, f"{type(exc).__name__}: {exc}")
    finally:
        await a.close()
        await b.close()
