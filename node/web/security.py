"""Who may talk to the dashboard, and with what.

- :class:`HostPolicy` checks the ``Host`` header against the names this box really has
  (localhost, its own addresses, ``<hostname>.local``, configured names), so a hostile web page
  cannot reach the API through DNS rebinding.
- :func:`peer_allowed` applies ``[web] access``: ``local``, ``lan`` (private ranges) or ``any``.
- :class:`AdminToken` reads ``DATA_DIR/admin.token`` and compares bearer tokens in constant
  time; actions are refused without it. The token is never logged or put in a page.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from node.errors import NodeError

ADMIN_TOKEN_FILE = "admin.token"
_REFRESH_S = 5.0
_LAN_NETS = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
]


def local_addresses() -> set[str]:
    """Every address configured on this machine's interfaces (without zone ids)."""
    found = {"127.0.0.1", "::1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                found.add(a.address.split("%", 1)[0].lower())
    return found


def lan_addresses() -> list[str]:
    """The non-loopback IPv4 and IPv6 addresses of this machine, for mDNS."""
    out = []
    for text in sorted(local_addresses()):
        ip = ipaddress.ip_address(text)
        if not ip.is_loopback and not ip.is_multicast and not ip.is_unspecified:
            out.append(text)
    return out


def split_host(header: str) -> str | None:
    """The host part of a ``Host`` header, lowercased, or None when it is malformed."""
    text = header.strip().lower()
    if not text or len(text) > 261:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, rest = text.partition(":")
        rest = sep + rest
    if rest and not (rest[0] == ":" and rest[1:].isdigit() and len(rest) <= 6):
        return None
    host = host.rstrip(".")
    if not host:
        return None
    return host


class HostPolicy:
    """The ``Host`` names the dashboard answers to."""

    def __init__(self, extra: Iterable[str] = (), hostname: str | None = None) -> None:
        name = (hostname or socket.gethostname()).lower().rstrip(".")
        short = name.split(".", 1)[0]
        self.names = {"localhost", name, short, f"{short}.local"}
        self.names |= {e.lower().rstrip(".") for e in extra if e}
        self._addresses = local_addresses()
        self._refreshed = time.monotonic()

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        host = split_host(header)
        if host is None:
            return False
        if host in self.names:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        text = str(ip)
        if text in self._addresses:
            return True
        # Addresses change (DHCP, a new interface): look again, at most every few seconds.
        if time.monotonic() - self._refreshed > _REFRESH_S:
            self._addresses = local_addresses()
            self._refreshed = time.monotonic()
        return text in self._addresses


def peer_allowed(access: str, remote: str | None) -> bool:
    """Whether a client at ``remote`` may use the dashboard under ``[web] access``."""
    if access == "any":
        return True
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    if access == "local":
        return False
    return any(ip in net for net in _LAN_NETS)


class AdminToken:
    """The owner's token in ``DATA_DIR/admin.token`` (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ADMIN_TOKEN_FILE

    def _read(self) -> bytes | None:
        try:
            text = self.path.read_bytes().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeError(f"cannot read {self.path}: {exc.strerror}") from exc
        return text or None

    def configured(self) -> bool:
        return self._read() is not None

    def check(self, authorization: str | None) -> bool:
        """True when ``authorization`` is ``Bearer <the token>``; constant-time comparison."""
        expected = self._read()
        if expected is None or not authorization:
            return False
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)

    def rotate(self) -> str:
        """Write a fresh token atomically and return it."""
        token = secrets.token_urlsafe(24)
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return token
