# UDP sockets for the relay engine: MicroPython's own, or CPython's behind the same calls.
#
# The engine needs readinto(buf) -> n or None, write(buf, n), recvfrom(n), connect(addr),
# close(). MicroPython sockets have exactly these; under CPython (tests, the lab) a thin
# wrapper maps them onto recv_into/send. Every socket is non-blocking.
import socket

_MICRO = hasattr(socket.socket, "readinto")


def _addr(host, port):
    return socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]


class _Udp:
    # CPython: the MicroPython calls the engine uses, over a real socket.
    def __init__(self, s):
        self.s = s

    def readinto(self, buf):
        try:
            return self.s.recv_into(buf)
        except BlockingIOError:
            return None
        except ConnectionRefusedError:
            return None

    def write(self, buf, n):
        try:
            return self.s.send(memoryview(buf)[:n])
        except ConnectionRefusedError:
            return 0

    def recvfrom(self, n):
        return self.s.recvfrom(n)

    def connect(self, addr):
        self.s.connect(addr)

    def close(self):
        self.s.close()

    def fileno(self):
        return self.s.fileno()


class Net:
    """Opens the engine's sockets on ``bind_host`` (all interfaces by default)."""

    def __init__(self, bind_host="0.0.0.0"):
        self.bind_host = bind_host

    def _new(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if not _MICRO:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s

    def _wrap(self, s):
        s.setblocking(False)
        return s if _MICRO else _Udp(s)

    def udp(self, port):
        s = self._new()
        try:
            s.bind(_addr(self.bind_host, port))
        except OSError:
            s.close()
            raise
        return self._wrap(s)

    def control(self, host, port):
        s = self._new()
        s.bind(_addr(self.bind_host, 0))
        s.connect(_addr(host, port))
        return self._wrap(s)
