# Frames over BLE: split to the negotiated MTU and joined again in a fixed buffer.
#
# Each chunk starts with one byte: bit 7 set when more chunks follow, bits 0-6 a sequence
# number counting up from 0 within the frame. A gap, an overlong frame or a stray chunk
# drops the partial frame; the next chunk with sequence 0 starts a new one.
from micropython import const

_MORE = const(0x80)
_SEQ = const(0x7F)
ATT_OVERHEAD = const(3)


def chunks(frame, mtu):
    """Yield memoryview-backed chunks of ``frame`` (bytes) for an ATT MTU."""
    room = mtu - ATT_OVERHEAD - 1
    if room < 1:
        raise ValueError("mtu too small")
    n = len(frame)
    count = (n + room - 1) // room if n else 1
    if count > _SEQ + 1:
        raise ValueError("frame too long for this mtu")
    mv = memoryview(frame)
    for i in range(count):
        part = mv[i * room : (i + 1) * room]
        head = (_MORE if i < count - 1 else 0) | i
        yield bytes((head,)) + part


class Joiner:
    """Reassembles chunks into a preallocated buffer of ``size`` bytes."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.n = 0
        self.expect = 0
        self.dropped = 0

    def feed(self, chunk):
        """Add one chunk; returns a memoryview of the whole frame when complete, else None."""
        if not chunk:
            self.dropped += 1
            return None
        head = chunk[0]
        seq = head & _SEQ
        if seq == 0:
            if self.n:
                self.dropped += 1
            self.n = 0
            self.expect = 0
        if seq != self.expect:
            self.dropped += 1
            self.n = 0
            self.expect = 0
            return None
        part = len(chunk) - 1
        if self.n + part > len(self.buf):
            self.dropped += 1
            self.n = 0
            self.expect = 0
            return None
        self.buf[self.n : self.n + part] = chunk[1:]
        self.n += part
        self.expect += 1
        if head & _MORE:
            return None
        n = self.n
        self.n = 0
        self.expect = 0
        return memoryview(self.buf)[:n]
