"""The systemd notify protocol (sd_notify(3)) on $NOTIFY_SOCKET, without extra dependencies."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends READY=1, STATUS=…, WATCHDOG=1, STOPPING=1 when run under systemd; else nothing."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        if self._addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @staticmethod
    def watchdog_interval() -> float | None:
        """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when unset."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; returns False when not under systemd or the send failed."""
        if self._sock is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self._addr)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
