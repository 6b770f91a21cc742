# The relay engine: registration with the home box, allocations and frame forwarding.
#
# Theory of operation. The relay registers with HELLO (a fresh challenge) and retries with
# exponential back-off until the box answers WELCOME with that challenge; it then sends a
# HEARTBEAT every keepalive and registers again when the box stops acknowledging (box restart,
# Wi-Fi loss). The box grants allocations (ALLOC): a slot with two UDP legs on fixed local ports,
# each leg permitted to one peer IPv4 address (0: any). A leg learns its peer's address from the
# first datagram, checks the permission and connect()s to it; from then on datagrams are moved
# with readinto into one preallocated buffer and written to the other leg unchanged: the payload
# is never parsed nor kept. Byte and packet quotas and idle expiry end an allocation (ALLOC_END).
# Sockets come from a factory (brelay.net), so the same engine runs on a board and under CPython.
from brelay import log, rand, ticks, wire
from brelay.hmac import Hmac
from micropython import const

_FRAME = const(1536)
_BURST = const(16)
MAX_SLOTS = const(4)
_REG_MIN_MS = const(1000)
_REG_MAX_MS = const(30000)
_MISSES = const(3)
_MIN_IDLE_MS = const(1000)
_MAX_QUOTA = const(0x3FFFFFFF)

REGISTERING = const(0)
RUNNING = const(1)
OFFLINE = const(2)


def ip4(text):
    """Dotted IPv4 text as an integer (0 when it is not IPv4)."""
    parts = text.split(".")
    if len(parts) != 4:
        return 0
    v = 0
    for p in parts:
        if not p.isdigit() or int(p) > 255:
            return 0
        v = (v << 8) | int(p)
    return v


class Slot:
    """One allocation: two legs, quotas, idle timer."""

    def __init__(self, index, port_base):
        self.index = index
        self.ports = (port_base + 2 * index, port_base + 2 * index + 1)
        self.socks = [None, None]
        self.latched = [False, False]
        self.ips = [0, 0]
        self.alloc_id = 0
        self.used = False
        self.bytes_left = 0
        self.pkts_left = 0
        self.idle_ms = 0
        self.last_ms = 0
        self.pkts = 0
        self.bytes = 0


class Relay:
    def __init__(self, cfg, net, heap=None, bridge=None):
        self.relay_id = cfg["relay_id"]
        self.mac = Hmac(cfg["key"])
        self.home = cfg["home"]
        self.port_base = cfg.get("port_base", 7710)
        self.epoch = cfg.get("epoch", 0) & 0xFFFFFFFF
        self.seq = 0
        self.net = net
        self.heap = heap
        self.bridge = bridge
        self.buf = bytearray(_FRAME)
        self.cbuf = bytearray(wire.MAX_MSG)
        self.slots = [Slot(i, self.port_base) for i in range(MAX_SLOTS)]
        self.next_slot = 0
        self.ctl = None
        self.state = OFFLINE
        self.challenge = b""
        self.window = None
        self.keepalive_ms = 15000
        self.backoff_ms = _REG_MIN_MS
        self.next_ms = 0
        self.last_ack_ms = 0
        self.started_ms = 0
        self.fwd_pkts = 0
        self.fwd_bytes = 0
        self.drops = 0
        self.rejected = 0
        self.registrations = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, now):
        """Open the control socket and begin registering (after boot or Wi-Fi came back)."""
        self.stop()
        self.ctl = self.net.control(self.home[0], self.home[1])
        self.state = REGISTERING
        self.backoff_ms = _REG_MIN_MS
        self.next_ms = now
        self.started_ms = now

    def stop(self):
        """Close every socket (Wi-Fi lost); allocations end, the box hears it on re-register."""
        for s in self.slots:
            if s.used:
                self._end(s, wire.END_RESET, False)
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        self.state = OFFLINE

    # -- timers ----------------------------------------------------------------------------

    def step(self, now):
        """Run timers: registration retries, heartbeats, box loss, idle expiry."""
        if self.state == OFFLINE:
            return
        if self.state == REGISTERING:
            if ticks.diff(now, self.next_ms) >= 0:
                self._hello()
                jitter = _rand16() % (self.backoff_ms // 4 + 1)
                self.next_ms = ticks.add(now, self.backoff_ms + jitter)
                self.backoff_ms = min(self.backoff_ms * 2, _REG_MAX_MS)
        elif self.state == RUNNING:
            if ticks.diff(now, self.last_ack_ms) > _MISSES * self.keepalive_ms:
                log.info("box silent, registering again")
                self.state = REGISTERING
                self.backoff_ms = _REG_MIN_MS
                self.next_ms = now
            elif ticks.diff(now, self.next_ms) >= 0:
                self._heartbeat(now)
                self.next_ms = ticks.add(now, self.keepalive_ms)
        slots = self.slots
        for i in range(MAX_SLOTS):
            s = slots[i]
            if s.used and ticks.diff(now, s.last_ms) > s.idle_ms:
                self._end(s, wire.END_IDLE, True)

    def next_deadline(self, now):
        """Milliseconds until step() has work."""
        if self.state == OFFLINE:
            return 1000
        return max(0, ticks.diff(self.next_ms, now))

    # -- I/O -------------------------------------------------------------------------------

    def pump(self, now):
        """Drain every socket (rp2 queues only 4 datagrams each); returns datagrams handled."""
        done = 0
        ctl = self.ctl
        if ctl is not None:
            k = 0
            while k < _BURST:
                try:
                    n = ctl.readinto(self.cbuf)
                except OSError:
                    n = None
                if not n:
                    break
                self._control(memoryview(self.cbuf)[:n], now)
                k += 1
            done += k
        slots = self.slots
        for i in range(MAX_SLOTS):
            s = slots[i]
            if s.used:
                done += self._drain(s, 0, now)
                if s.used:
                    done += self._drain(s, 1, now)
        return done

    def _drain(self, s, side, now):
        sock = s.socks[side]
        buf = self.buf
        k = 0
        while k < _BURST:
            if s.latched[side]:
                try:
                    n = sock.readinto(buf)
                except OSError:
                    n = None
                if not n:
                    break
            else:
                n = self._latch(s, side)
                if n < 0:
                    break
                if n == 0:
                    k += 1
                    continue
            k += 1
            s.last_ms = now
            s.bytes_left -= n
            s.pkts_left -= 1
            if s.bytes_left < 0 or s.pkts_left < 0:
                self.drops += 1
                self._end(s, wire.END_QUOTA, True)
                break
            if not s.latched[1 - side]:
                self.drops += 1
                continue
            try:
                s.socks[1 - side].write(buf, n)
            except OSError:
                self.drops += 1
                continue
            s.pkts += 1
            s.bytes += n
            self.fwd_pkts += 1
            self.fwd_bytes += n
        return k

    def _latch(self, s, side):
        # First datagram on a leg: check the sender against the permission, then connect().
        try:
            data, addr = s.socks[side].recvfrom(_FRAME)
        except OSError:
            return -1
        want = s.ips[side]
        if want and ip4(addr[0]) != want:
            self.drops += 1
            log.debug("leg", s.alloc_id, side, "refused", addr[0])
            return 0
        s.socks[side].connect(addr)
        s.latched[side] = True
        n = len(data)
        self.buf[:n] = data
        return n

    def _send(self, typ, *fields):
        if self.ctl is None:
            return
        self.seq += 1
        counter = (self.epoch << 32) | (self.seq & 0xFFFFFFFF)
        msg = wire.pack(self.mac, typ, self.relay_id, counter, *fields)
        try:
            self.ctl.write(msg, len(msg))
        except OSError as e:
            log.debug("control send failed", e)

    def _hello(self):
        self.challenge = rand.urandom(8)
        self.registrations += 1
        heap = self.heap() if self.heap else 0
        self._send(wire.HELLO, self.challenge, 1, heap, self.port_base, MAX_SLOTS)

    def _heartbeat(self, now):
        heap = self.heap() if self.heap else 0
        used = sum(1 for s in self.slots if s.used)
        up = ticks.diff(now, self.started_ms) // 1000
        self._send(wire.HEARTBEAT, heap, up, used, self.fwd_pkts, self.fwd_bytes, self.drops)
        # Counters are sent as deltas so they stay small integers (no heap on the device).
        self.fwd_pkts = 0
        self.fwd_bytes = 0
        self.drops = 0

    def send_bridge(self, payload):
        """Carry a frame from a BLE peer to the box (only while registered)."""
        if self.state != RUNNING:
            return False
        self._send(wire.BRIDGE, payload)
        return True

    # -- control messages ------------------------------------------------------------------

    def _control(self, msg, now):
        try:
            typ, _, counter, body = wire.decode(self.mac, msg, self.relay_id)
        except wire.WireError as e:
            self.rejected += 1
            log.info("control rejected:", e)
            return
        if typ == wire.WELCOME:
            if self.state != REGISTERING or body[0] != self.challenge:
                self.rejected += 1
                log.info("control rejected: stale welcome")
                return
            self.window = wire.Window(counter)
            # A new registration: the box has forgotten any allocation (a restart, say).
            for s in self.slots:
                if s.used:
                    self._end(s, wire.END_RESET, True)
            self.keepalive_ms = max(1000, min(body[1], 300000))
            self.state = RUNNING
            self.backoff_ms = _REG_MIN_MS
            self.last_ack_ms = now
            self.next_ms = ticks.add(now, self.keepalive_ms)
            log.info("registered with home box")
            return
        if self.state != RUNNING or not self.window.accept(counter):
            self.rejected += 1
            log.info("control rejected: replayed or unexpected", typ)
            return
        self.last_ack_ms = now
        if typ == wire.ALLOC:
            self._alloc(body, now)
        elif typ == wire.FREE:
            for s in self.slots:
                if s.used and s.alloc_id == body[0]:
                    self._end(s, wire.END_FREED, True)
        elif typ == wire.BRIDGE:
            if self.bridge:
                self.bridge(body)
        elif typ != wire.HEARTBEAT_ACK:
            self.rejected += 1

    def _alloc(self, body, now):
        alloc_id, ip_a, ip_b, byte_q, pkt_q, idle_ms = body
        free = None
        slots = self.slots
        for k in range(MAX_SLOTS):
            # Free slots are taken round-robin, so the ports of an allocation that just ended
            # rest: late datagrams of its peers must not latch the next allocation.
            s = slots[(self.next_slot + k) % MAX_SLOTS]
            if s.used and s.alloc_id == alloc_id:
                # A retransmitted ALLOC: answer again, change nothing.
                self._send(wire.ALLOC_OK, alloc_id, s.ports[0], s.ports[1])
                return
            if not s.used and free is None:
                free = s
        if not (0 < byte_q <= _MAX_QUOTA and 0 < pkt_q <= _MAX_QUOTA and idle_ms >= _MIN_IDLE_MS):
            self._send(wire.ALLOC_ERR, alloc_id, wire.ERR_BAD)
            return
        if free is None:
            self._send(wire.ALLOC_ERR, alloc_id, wire.ERR_FULL)
            return
        s = free
        try:
            s.socks[0] = self.net.udp(s.ports[0])
            s.socks[1] = self.net.udp(s.ports[1])
        except OSError as e:
            log.error("cannot open relay ports", s.ports, e)
            self._close(s)
            self._send(wire.ALLOC_ERR, alloc_id, wire.ERR_BAD)
            return
        s.used = True
        self.next_slot = (s.index + 1) % MAX_SLOTS
        s.alloc_id = alloc_id
        s.ips[0] = ip_a
        s.ips[1] = ip_b
        s.latched[0] = s.latched[1] = False
        s.bytes_left = byte_q
        s.pkts_left = pkt_q
        s.idle_ms = min(idle_ms, 3600000)
        s.last_ms = now
        s.pkts = s.bytes = 0
        log.info("allocation", alloc_id, "on ports", s.ports[0], s.ports[1])
        self._send(wire.ALLOC_OK, alloc_id, s.ports[0], s.ports[1])

    def _close(self, s):
        for i in (0, 1):
            if s.socks[i] is not None:
                s.socks[i].close()
                s.socks[i] = None
        s.used = False

    def _end(self, s, reason, tell):
        log.info("allocation", s.alloc_id, "ended", reason)
        self._close(s)
        if tell:
            self._send(wire.ALLOC_END, s.alloc_id, reason, s.pkts, s.bytes)

    def sockets(self):
        """Every open socket (for a poll/select loop that sleeps until one is readable)."""
        out = [self.ctl] if self.ctl is not None else []
        for s in self.slots:
            if s.used:
                out.extend(x for x in s.socks if x is not None)
        return out

    def allocations(self):
        return sum(1 for s in self.slots if s.used)


def _rand16():
    r = rand.urandom(2)
    return (r[0] << 8) | r[1]
