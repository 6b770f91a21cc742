"""Finding boxes on the LAN: browse mDNS for ``_bitchat._tcp.local.`` (zeroconf).

Each box announces itself with its hostname as the instance name, its dashboard port, and TXT
``node_id``, ``version`` and ``path``. Announcements are outside input: names, TXT values and
addresses are bounded and checked, and a malformed record is reported, not trusted.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

SERVICE = "_bitchat._tcp.local."
_NODE_ID = re.compile(r"^[a-z2-7]{52}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]{0,40}$")
_MAX_BOXES = 4096


@dataclass(frozen=True)
class Found:
    """One box seen on the LAN."""

    name: str
    """Instance name (the box's hostname)."""
    addresses: tuple[str, ...]
    port: int
    node_id: str | None
    version: str | None
    path: str
    problem: str | None = None
    """Why the announcement cannot be trusted as it is, if it cannot."""

    @property
    def url(self) -> str:
        addr = self.addresses[0] if self.addresses else self.name
        host = f"[{addr}]" if ":" in addr else addr
        return f"http://{host}:{self.port}{self.path}"


def _text(props: dict[Any, Any], key: str) -> str | None:
    raw = props.get(key.encode())
    if raw is None:
        return None
    if not isinstance(raw, bytes) or len(raw) > 255:
        return ""
    return raw.decode("utf-8", errors="replace")


def parse_announcement(name: str, addresses: list[str], port: int, props: dict[Any, Any]) -> Found:
    """Turn one resolved mDNS service into a Found, marking what is malformed."""
    instance = name.removesuffix("." + SERVICE)[:63]
    problems = []
    node_id = _text(props, "node_id")
    if node_id is not None and not _NODE_ID.match(node_id):
        problems.append("malformed node_id")
        node_id = None
    version = _text(props, "version")
    if version is not None and not _VERSION.match(version):
        problems.append("malformed version")
        version = None
    path = _text(props, "path") or "/"
    if not path.startswith("/") or len(path) > 100 or any(c in path for c in " \r\n\t"):
        problems.append("malformed path")
        path = "/"
    addrs = []
    for a in addresses[:8]:
        try:
            addrs.append(str(ipaddress.ip_address(a)))
        except ValueError:
            problems.append("malformed address")
    if not 0 < port < 65536:
        problems.append("bad port")
    return Found(instance, tuple(addrs), port, node_id, version, path, "; ".join(problems) or None)


def browse(timeout: float = 3.0, interfaces: list[str] | None = None) -> list[Found]:
    """Every box that answers within ``timeout`` seconds, sorted by name."""
    zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only) if interfaces else Zeroconf()
    names: set[str] = set()
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            with lock:
                if len(names) < _MAX_BOXES:
                    names.add(name)

    try:
        browser = ServiceBrowser(zc, SERVICE, handlers=[on_change])
        time.sleep(timeout)
        browser.cancel()
        found = []
        with lock:
            seen = sorted(names)
        for name in seen:
            info = zc.get_service_info(SERVICE, name, timeout=1500)
            if info is None:
                continue
            found.append(
                parse_announcement(
                    name, info.parsed_addresses(), info.port or 0, dict(info.properties or {})
                )
            )
        return found
    finally:
        zc.close()
