"""mDNS: the box announces its dashboard on the LAN (zeroconf).

Service ``<hostname>._bitchat._tcp.local.`` on the web port with TXT ``node_id``, ``version``
and ``path=/``; its server name ``<hostname>.local.`` carries A/AAAA records for the box's LAN
addresses, so ``http://<hostname>.local:<port>/`` works and ``bitchat-fleet discover`` finds
the box. The addresses are checked every minute and the records updated when they change.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from zeroconf import InterfaceChoice, IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from node import log

SERVICE_TYPE = "_bitchat._tcp.local."
RECHECK_S = 60.0

_log = log.get_logger(__name__)


def instance_label(hostname: str) -> str:
    """A DNS label made from the host name (letters, digits and hyphens, at most 63)."""
    short = hostname.split(".", 1)[0]
    label = "".join(c if c.isalnum() or c == "-" else "-" for c in short).strip("-")
    return label[:63] or "bitchat-node"


def service_info(
    hostname: str,
    port: int,
    addresses: list[str],
    node_id: str,
    version: str,
    name: str | None = None,
) -> ServiceInfo:
    """The service record; ``name`` keeps the instance name a conflict made us pick."""
    label = instance_label(hostname)
    return ServiceInfo(
        SERVICE_TYPE,
        name or f"{label}.{SERVICE_TYPE}",
        port=port,
        properties={"node_id": node_id, "version": version, "path": "/"},
        server=f"{label}.local.",
        parsed_addresses=addresses,
    )


class Announcer:
    """Registers the service while it runs; says goodbye when cancelled."""

    def __init__(
        self,
        *,
        hostname: str,
        port: int,
        node_id: str,
        version: str,
        addresses: Callable[[], list[str]],
        interfaces: list[str] | None = None,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.node_id = node_id
        self.version = version
        self._addresses = addresses
        self._interfaces = interfaces
        self.name: str | None = None
        self.announced: list[str] = []

    def _info(self, addresses: list[str]) -> ServiceInfo:
        return service_info(
            self.hostname, self.port, addresses, self.node_id, self.version, self.name
        )

    async def run(self) -> None:
        addresses = self._addresses()
        if self._interfaces is not None:
            zc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        else:
            zc = AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
        info = self._info(addresses)
        try:
            # The first await probes for conflicts and registers; the second announces.
            announcing = await zc.async_register_service(info, allow_name_change=True)
            self.name, self.announced = info.name, addresses
            await announcing
            _log.info(
                "mdns_announced",
                name=info.name,
                server=info.server,
                port=self.port,
                addresses=",".join(addresses),
            )
            while True:
                await asyncio.sleep(RECHECK_S)
                now = self._addresses()
                if now != self.announced and now:
                    info = self._info(now)
                    await (await zc.async_update_service(info))
                    self.announced = now
                    _log.info("mdns_updated", addresses=",".join(now))
        finally:
            await zc.async_unregister_all_services()
            await zc.async_close()


def default_hostname() -> str:
    return socket.gethostname()
