# Test double of MicroPython's socket module: in-memory UDP with fixed-size queues.
# Datagrams are copied into preallocated slots, so moving one allocates nothing.
AF_INET = 2
SOCK_DGRAM = 2
SOL_SOCKET = 1
SO_REUSEADDR = 4
_QUEUE = 4
_SLOT = 1536

bound = {}


def getaddrinfo(host, port, af=0, kind=0):
    return [(AF_INET, kind, 0, "", (host, port))]


class socket:
    def __init__(self, af=AF_INET, kind=SOCK_DGRAM):
        self.slots = [bytearray(_SLOT) for _ in range(_QUEUE)]
        self.lens = [0] * _QUEUE
        self.srcs = [None] * _QUEUE
        self.head = 0
        self.count = 0
        self.addr = None
        self.peer = None
        self.closed = False
        self.dropped = 0

    def setblocking(self, flag):
        pass

    def setsockopt(self, *a):
        pass

    def bind(self, addr):
        if addr in bound:
            raise OSError(98)
        self.addr = addr
        bound[addr] = self

    def connect(self, addr):
        self.peer = addr

    def close(self):
        self.closed = True
        if self.addr in bound and bound[self.addr] is self:
            del bound[self.addr]

    def deliver(self, buf, n, src):
        if self.count == _QUEUE:
            self.dropped += 1
            return
        i = (self.head + self.count) % _QUEUE
        slot = self.slots[i]
        for k in range(n):
            slot[k] = buf[k]
        self.lens[i] = n
        self.srcs[i] = src
        self.count += 1

    def _pop(self):
        i = self.head
        self.head = (self.head + 1) % _QUEUE
        self.count -= 1
        return i

    def readinto(self, buf):
        while self.count:
            i = self._pop()
            if self.peer is None or self.srcs[i] == self.peer:
                n = self.lens[i]
                slot = self.slots[i]
                for k in range(n):
                    buf[k] = slot[k]
                return n
        return None

    def recvfrom(self, size):
        if not self.count:
            raise OSError(11)
        i = self._pop()
        return bytes(self.slots[i][: self.lens[i]]), self.srcs[i]

    def write(self, buf, n):
        dest = bound.get(self.peer)
        if dest is not None:
            dest.deliver(buf, n, self.addr)
        return n

    def sendto(self, data, addr):
        dest = bound.get(addr)
        if dest is not None:
            dest.deliver(data, len(data), self.addr)
