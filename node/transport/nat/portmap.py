"""Router port mapping for the node's UDP port: PCP, then NAT-PMP, then UPnP-IGD.

:class:`PortMapper` asks the default gateway for a mapping of the node's port, keeps it by
renewing at half its lifetime, and deletes it on :meth:`PortMapper.close`. PCP and NAT-PMP
use the codecs in :mod:`node.transport.nat.pcp` over a UDP socket to the gateway (retries at
250 ms doubling, as RFC 6886 section 3.1 asks); UPnP-IGD goes through async-upnp-client
(SSDP search, then the WANIPConnection service of the first gateway found).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import secrets
import socket
from collections.abc import Callable
from typing import Any

from node import log
from node.transport.nat import pcp
from node.transport.nat.errors import PortMapError
from node.transport.nat.pcp import Mapping

_log = log.get_logger(__name__)

RETRY_FIRST = 0.25
RETRY_COUNT = 4
UPNP_SEARCH_S = 3
DESCRIPTION = "bitchat-node"

SocketFactory = Callable[[], socket.socket]


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway from the kernel's routing table, or None."""
    try:
        with open(route_file) as fh:
            lines = fh.readlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return str(ipaddress.IPv4Address(int(fields[2], 16).to_bytes(4, "little")))
    return None


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data)


async def _transact(
    sock_factory: SocketFactory,
    gateway: str,
    request: bytes,
    parse: Callable[[bytes], Any],
    tries: int = RETRY_COUNT,
) -> tuple[Any, str]:
    """Send ``request`` to the gateway until ``parse`` accepts an answer; returns (answer,
    our local IP as the gateway sees it)."""
    loop = asyncio.get_running_loop()
    sock = sock_factory()
    sock.setblocking(False)
    try:
        sock.connect((gateway, pcp.PORT))
    except OSError as exc:
        sock.close()
        raise PortMapError(f"cannot reach gateway {gateway}:{pcp.PORT}: {exc.strerror}") from exc
    local_ip = sock.getsockname()[0]
    transport, proto = await loop.create_datagram_endpoint(_Reply, sock=sock)
    try:
        wait = RETRY_FIRST
        last: PortMapError | None = None
        for _ in range(tries):
            transport.sendto(request)
            deadline = loop.time() + wait
            while (left := deadline - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(proto.queue.get(), left)
                except TimeoutError:
                    break
                try:
                    return parse(data), local_ip
                except PortMapError as exc:
                    last = exc
                    if "refused" in str(exc) or "version" in str(exc):
                        raise
            wait *= 2
        raise last or PortMapError(f"gateway {gateway} did not answer on UDP {pcp.PORT}")
    finally:
        transport.close()


class PortMapper:
    """Keeps one UDP port mapping on the home router."""

    def __init__(
        self,
        internal_port: int,
        lifetime: int = 3600,
        *,
        gateway: str | None = None,
        sock_factory: SocketFactory | None = None,
        protocols: tuple[str, ...] = ("pcp", "nat-pmp", "upnp"),
    ) -> None:
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.gateway = gateway
        self.sock_factory = sock_factory or (
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        self.protocols = protocols
        self.mapping: Mapping | None = None
        self.local_ip: str | None = None
        self._nonce = secrets.token_bytes(12)
        self._renew: asyncio.Task[None] | None = None
        self._igd: Any = None

    @property
    def external(self) -> tuple[str, int] | None:
        m = self.mapping
        if m is None or m.external_ip is None:
            return None
        return m.external_ip, m.external_port

    def describe(self) -> str:
        m = self.mapping
        if m is None:
            return "none"
        where = f"{m.external_ip}:{m.external_port}" if m.external_ip else f"port {m.external_port}"
        return f"{m.protocol} {where} ({m.lifetime} s)"

    async def start(self) -> Mapping:
        """Get a mapping with the first protocol the router speaks; raise PortMapError if none."""
        mapping = await self.request(self.lifetime)
        self._renew = asyncio.create_task(self._renew_loop())
        return mapping

    async def request(self, lifetime: int) -> Mapping:
        gateway = self.gateway or default_gateway()
        if gateway is None:
            raise PortMapError("no IPv4 default gateway, so no router to ask for a port mapping")
        errors = []
        for proto in self.protocols:
            try:
                if proto == "pcp":
                    mapping = await self._pcp(gateway, lifetime)
                elif proto == "nat-pmp":
                    mapping = await self._natpmp(gateway, lifetime)
                else:
                    mapping = await self._upnp(lifetime)
            except PortMapError as exc:
                errors.append(f"{proto}: {exc}")
                continue
            self.mapping = mapping
            _log.info("port_mapped", mapping=self.describe())
            return mapping
        raise PortMapError("router gave no port mapping (" + "; ".join(errors) + ")")

    async def _pcp(self, gateway: str, lifetime: int) -> Mapping:
        suggested = self.mapping.external_port if self.mapping else self.internal_port
        probe = self.sock_factory()
        try:
            probe.connect((gateway, pcp.PORT))
            client_ip = probe.getsockname()[0]
        except OSError as exc:
            raise PortMapError(f"cannot reach gateway {gateway}: {exc.strerror}") from exc
        finally:
            probe.close()
        request = pcp.pcp_map_request(
            client_ip, self._nonce, self.internal_port, suggested, lifetime
        )
        mapping, self.local_ip = await _transact(
            self.sock_factory,
            gateway,
            request,
            lambda d: pcp.parse_pcp_map(d, self._nonce, self.internal_port),
        )
        assert isinstance(mapping, Mapping)
        return mapping

    async def _natpmp(self, gateway: str, lifetime: int) -> Mapping:
        (external_ip, _), self.local_ip = await _transact(
            self.sock_factory, gateway, pcp.natpmp_address_request(), pcp.parse_natpmp_address
        )
        suggested = self.mapping.external_port if self.mapping else self.internal_port
        request = pcp.natpmp_map_request(self.internal_port, suggested, lifetime)
        mapping, _ = await _transact(
            self.sock_factory,
            gateway,
            request,
            lambda d: pcp.parse_natpmp_map(d, self.internal_port),
        )
        assert isinstance(mapping, Mapping)
        return Mapping(
            "nat-pmp", mapping.internal_port, mapping.external_port, external_ip,
            mapping.lifetime, mapping.epoch,
        )  # fmt: skip

    async def _find_igd(self) -> Any:
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory
        from async_upnp_client.profiles.igd import IgdDevice
        from async_upnp_client.search import async_search

        locations: list[str] = []

        async def found(headers: Any) -> None:
            location = headers.get("location")
            if location and location not in locations:
                locations.append(str(location))

        for target in IgdDevice.DEVICE_TYPES:
            with contextlib.suppress(OSError):
                await async_search(found, timeout=UPNP_SEARCH_S, search_target=target)
            if locations:
                break
        if not locations:
            raise PortMapError("no UPnP Internet Gateway Device answered the SSDP search")
        factory = UpnpFactory(AiohttpRequester())
        try:
            device = await factory.async_create_device(locations[0])
        except Exception as exc:
            raise PortMapError(f"UPnP gateway at {locations[0]} is unusable: {exc}") from exc
        return IgdDevice(device, None)

    async def _upnp(self, lifetime: int) -> Mapping:
        if self._igd is None:
            self._igd = await self._find_igd()
        igd = self._igd
        location = igd.device.device_url
        host = location.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        probe = self.sock_factory()
        try:
            probe.connect((host, 9))
            local_ip = probe.getsockname()[0]
        finally:
            probe.close()
        external_port = self.mapping.external_port if self.mapping else self.internal_port
        try:
            await igd.async_add_port_mapping(
                remote_host=ipaddress.IPv4Address("0.0.0.0"),
                external_port=external_port,
                protocol="UDP",
                internal_port=self.internal_port,
                internal_client=ipaddress.IPv4Address(local_ip),
                enabled=True,
                description=DESCRIPTION,
                lease_duration=datetime.timedelta(seconds=lifetime),
            )
            external_ip = await igd.async_get_external_ip_address()
        except Exception as exc:
            raise PortMapError(f"UPnP AddPortMapping refused: {exc}") from exc
        self.local_ip = local_ip
        return Mapping("upnp", self.internal_port, external_port, external_ip, lifetime)

    async def _renew_loop(self) -> None:
        while self.mapping is not None:
            await asyncio.sleep(max(30.0, self.mapping.lifetime / 2))
            try:
                await self.request(self.lifetime)
            except PortMapError as exc:
                _log.warning("port_mapping_renew_failed", error=str(exc))

    async def close(self) -> None:
        """Stop renewing and delete the mapping on the router."""
        if self._renew is not None:
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
            self._renew = None
        mapping, self.mapping = self.mapping, None
        if mapping is None:
            return
        gateway = self.gateway or default_gateway()
        try:
            if mapping.protocol == "pcp" and gateway:
                request = pcp.pcp_map_request(
                    self.local_ip or "0.0.0.0", self._nonce, self.internal_port, 0, 0
                )
                await _transact(
                    self.sock_factory, gateway, request,
                    lambda d: pcp.parse_pcp_map(d, self._nonce, self.internal_port), tries=2,
                )  # fmt: skip
            elif mapping.protocol == "nat-pmp" and gateway:
                request = pcp.natpmp_map_request(self.internal_port, 0, 0)
                await _transact(
                    self.sock_factory, gateway, request,
                    lambda d: pcp.parse_natpmp_map(d, self.internal_port), tries=2,
                )  # fmt: skip
            elif mapping.protocol == "upnp" and self._igd is not None:
                await self._igd.async_delete_port_mapping(
                    remote_host=ipaddress.IPv4Address("0.0.0.0"),
                    external_port=mapping.external_port,
                    protocol="UDP",
                )
        except Exception as exc:  # best effort: the mapping also expires on its own
            _log.info("port_mapping_delete_failed", error=str(exc))
        else:
            _log.info("port_unmapped", protocol=mapping.protocol)
