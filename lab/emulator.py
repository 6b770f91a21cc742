"""Userspace link emulator between two network namespaces, on TUN devices (as mahimahi does).

One process per link. It opens a TUN device in each of the two namespaces; every IP packet the
kernel routes into one device comes out of the other after passing, per direction, through:

    random loss  ->  duplication  ->  drop-tail queue  ->  token-bucket rate  ->  delay (+jitter,
    reordering)  ->  the other TUN device

The loop is one ``epoll`` over both TUN fds, a ``timerfd`` (absolute CLOCK_MONOTONIC deadlines,
sub-millisecond) and stdin; pending departures and deliveries live in one timer heap. The
process exits when stdin reaches EOF or its parent dies (``PR_SET_PDEATHSIG``), so a crashed
test never leaves an emulator behind. A line ``stats`` on stdin is answered with one JSON line of
counters on stdout; the same JSON is printed when the process exits.

Run ``python -m lab.emulator --a NS:DEV --b NS:DEV --both rate=20mbit,delay=25ms,queue=62500b``.
``Lab.link(..., emulate=LinkSpec(...))`` starts and configures it; see docs/lab.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import heapq
import json
import os
import random
import re
import resource
import select
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lab import _sys

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_TIMER_ABSTIME = 1
_READ_BATCH = 64


class EmulatorError(Exception):
    """A link specification or the emulator's setup is wrong."""


@dataclass(frozen=True)
class LinkSpec:
    """What one direction of an emulated link does to packets (all zero: a plain wire)."""

    rate_mbit: float = 0.0
    """Bottleneck rate in Mbit/s; 0 means unlimited."""
    delay_ms: float = 0.0
    """One-way propagation delay added after the bottleneck."""
    jitter_ms: float = 0.0
    """Each packet's delay is uniform in delay ± jitter (order is kept unless ``reorder``)."""
    loss: float = 0.0
    """Probability (0..1) that a packet is dropped at random."""
    duplicate: float = 0.0
    """Probability (0..1) that a packet is delivered twice."""
    reorder: float = 0.0
    """Probability (0..1) that a packet is held back ``reorder_ms`` so later ones overtake it."""
    reorder_ms: float = 10.0
    """Extra delay of a reordered packet."""
    queue_bytes: int = 0
    """Drop-tail queue limit in bytes (0: use ``queue_packets``)."""
    queue_packets: int = 1000
    """Drop-tail queue limit in packets, used when ``queue_bytes`` is 0."""
    burst_bytes: int = 3000
    """Token-bucket depth: how many bytes may leave back to back after an idle period."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EmulatorError(f"link spec: {name}={value} must be a fraction in 0..1")
        for name in ("rate_mbit", "delay_ms", "jitter_ms", "reorder_ms"):
            if getattr(self, name) < 0:
                raise EmulatorError(f"link spec: {name} must not be negative")
        if self.jitter_ms > self.delay_ms:
            raise EmulatorError("link spec: jitter_ms must not exceed delay_ms")
        if self.queue_bytes < 0 or self.queue_packets < 1 or self.burst_bytes < 1:
            raise EmulatorError("link spec: queue_packets and burst_bytes must be >= 1")

    @classmethod
    def bdp_queue(cls, rate_mbit: float, rtt_ms: float, bdps: float = 1.0, **kw: Any) -> LinkSpec:
        """A spec whose queue holds ``bdps`` bandwidth-delay products of ``rate`` times ``rtt``."""
        queue = max(1500, int(rate_mbit * 1e6 / 8 * rtt_ms / 1000 * bdps))
        return cls(rate_mbit=rate_mbit, delay_ms=rtt_ms / 2, queue_bytes=queue, **kw)

    def to_arg(self) -> str:
        """The command-line form parsed by :meth:`parse`."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"{f.name}={value}")
        return ",".join(parts) or "rate_mbit=0"

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """Parse ``key=value,...``; keys are field names or the short forms
        ``rate=20mbit delay=25ms jitter=2ms loss=1% dup=0.5% reorder=1% queue=62500b|100p``."""
        kw: dict[str, Any] = {}
        names = {f.name: f for f in fields(cls)}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = item.partition("=")
            if not sep:
                raise EmulatorError(f"link spec: {item!r} is not key=value")
            key, raw = key.strip(), raw.strip()
            try:
                if key == "rate":
                    kw["rate_mbit"] = _number(raw, {"mbit": 1.0, "kbit": 1e-3, "gbit": 1e3})
                elif key in ("delay", "jitter"):
                    kw[f"{key}_ms"] = _number(raw, {"ms": 1.0, "us": 1e-3, "s": 1e3})
                elif key in ("loss", "dup", "reorder"):
                    kw["duplicate" if key == "dup" else key] = _number(raw, {"%": 0.01, "": 1.0})
                elif key == "queue":
                    if raw.endswith("p"):
                        kw["queue_packets"] = int(raw[:-1])
                    else:
                        kw["queue_bytes"] = int(_number(raw, {"b": 1, "kb": 1000, "": 1}))
                elif key in names:
                    kind = names[key].type
                    kw[key] = int(raw) if kind in ("int", int) else float(raw)
                else:
                    raise EmulatorError(f"link spec: unknown key {key!r}")
            except ValueError as exc:
                raise EmulatorError(f"link spec: bad value in {item!r}: {exc}") from None
        return cls(**kw)


def _number(raw: str, units: dict[str, float]) -> float:
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z%]*)", raw.lower())
    if m is None or m.group(2) not in units:
        raise ValueError(f"expected a number with a unit in {sorted(units)}")
    return float(m.group(1)) * units[m.group(2)]


@dataclass
class DirectionStats:
    """Counters of one direction."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drop_loss: int = 0
    drop_queue: int = 0
    duplicated: int = 0
    reordered: int = 0
    write_errors: int = 0
    queue_bytes: int = 0
    queue_max_bytes: int = 0
    queue_delay_ms_max: float = 0.0
    queue_delay_ms_sum: float = 0.0


@dataclass
class _Direction:
    spec: LinkSpec
    out_fd: int
    rng: random.Random
    stats: DirectionStats = field(default_factory=DirectionStats)
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    tokens: float = 0.0
    token_time: float = 0.0
    last_delivery: float = 0.0
    next_departure: float | None = None

    def __post_init__(self) -> None:
        self.tokens = float(self.spec.burst_bytes)

    @property
    def byte_rate(self) -> float:
        return self.spec.rate_mbit * 1e6 / 8


class Emulator:
    """The packet pipeline of both directions; I/O is done by :func:`serve`."""

    def __init__(
        self, fd_a: int, fd_b: int, ab: LinkSpec, ba: LinkSpec, seed: int | None = None
    ) -> None:
        base = random.Random(seed)
        self.dirs = (
            _Direction(ab, fd_b, random.Random(base.random())),
            _Direction(ba, fd_a, random.Random(base.random())),
        )
        self.heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self.lateness_ms_max = 0.0
        self.lateness_ms_sum = 0.0
        self.deliveries = 0

    def receive(self, index: int, packet: bytes, now: float) -> None:
        """A packet entered direction ``index`` (0: a→b, 1: b→a)."""
        d = self.dirs[index]
        st = d.stats
        st.rx_packets += 1
        st.rx_bytes += len(packet)
        if d.spec.loss and d.rng.random() < d.spec.loss:
            st.drop_loss += 1
            return
        copies = 1
        if d.spec.duplicate and d.rng.random() < d.spec.duplicate:
            copies = 2
            st.duplicated += 1
        if d.queue:
            self._dequeue(index, now)  # free the room of packets already due to leave
        for _ in range(copies):
            limit_ok = (
                st.queue_bytes + len(packet) <= d.spec.queue_bytes
                if d.spec.queue_bytes
                else len(d.queue) < d.spec.queue_packets
            )
            if not limit_ok:
                st.drop_queue += 1
                continue
            d.queue.append((now, packet))
            st.queue_bytes += len(packet)
            st.queue_max_bytes = max(st.queue_max_bytes, st.queue_bytes)
        self._dequeue(index, now)

    def _dequeue(self, index: int, now: float) -> None:
        """Send every queued packet whose departure time has come.

        Departure times are computed on the link's own clock (token bucket refilled at the
        rate since the last departure), not from when this process happened to wake up: a
        late wake-up sends the backlog with its exact times, so scheduling hiccups of the
        emulator cost neither capacity nor delay accuracy.
        """
        d = self.dirs[index]
        spec, st = d.spec, d.stats
        rate = d.byte_rate
        burst = float(spec.burst_bytes)
        d.next_departure = None
        while d.queue:
            enq, packet = d.queue[0]
            if rate:
                start = max(enq, d.token_time)
                tokens = min(burst, d.tokens + (start - d.token_time) * rate)
                need = min(len(packet), spec.burst_bytes)
                depart = start if tokens >= need else start + (need - tokens) / rate
                if depart > now:
                    d.next_departure = depart
                    return
                d.tokens = min(burst, d.tokens + (depart - d.token_time) * rate) - len(packet)
                d.token_time = depart
            else:
                depart = enq
            d.queue.popleft()
            st.queue_bytes -= len(packet)
            waited = (depart - enq) * 1000
            st.queue_delay_ms_sum += waited
            st.queue_delay_ms_max = max(st.queue_delay_ms_max, waited)
            delay = spec.delay_ms
            if spec.jitter_ms:
                delay += d.rng.uniform(-spec.jitter_ms, spec.jitter_ms)
            at = depart + delay / 1000
            if spec.reorder and d.rng.random() < spec.reorder:
                st.reordered += 1
                at += spec.reorder_ms / 1000
            else:
                at = max(at, d.last_delivery)
                d.last_delivery = at
            self._seq += 1
            heapq.heappush(self.heap, (at, self._seq, index, packet))

    def next_deadline(self) -> float | None:
        times = [d.next_departure for d in self.dirs if d.next_departure is not None]
        if self.heap:
            times.append(self.heap[0][0])
        return min(times) if times else None

    def advance(self, now: float) -> list[tuple[int, bytes]]:
        """Run departures due by ``now``; return the packets to write as ``(fd, packet)``."""
        for i, d in enumerate(self.dirs):
            if d.next_departure is not None and d.next_departure <= now:
                self._dequeue(i, now)
        out: list[tuple[int, bytes]] = []
        while self.heap and self.heap[0][0] <= now:
            at, _, index, packet = heapq.heappop(self.heap)
            late = (now - at) * 1000
            self.lateness_ms_sum += late
            self.lateness_ms_max = max(self.lateness_ms_max, late)
            self.deliveries += 1
            d = self.dirs[index]
            d.stats.tx_packets += 1
            d.stats.tx_bytes += len(packet)
            out.append((d.out_fd, packet))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "ab": asdict(self.dirs[0].stats),
            "ba": asdict(self.dirs[1].stats),
            "timer_late_ms_mean": self.lateness_ms_sum / max(1, self.deliveries),
            "timer_late_ms_max": self.lateness_ms_max,
            "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        }


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.timerfd_settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
        ]  # fmt: skip

    def check(self, result: int, what: str) -> int:
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return result

    def timerfd(self) -> int:
        return self.check(self.lib.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK), "timerfd")

    def arm(self, fd: int, deadline: float | None) -> None:
        if deadline is None:
            spec = struct.pack("qqqq", 0, 0, 0, 0)  # disarm
        else:
            sec = int(deadline)
            nsec = max(1, int((deadline - sec) * 1e9))
            spec = struct.pack("qqqq", 0, 0, sec, nsec)
        buf = ctypes.create_string_buffer(spec)
        self.check(self.lib.timerfd_settime(fd, _TFD_TIMER_ABSTIME, buf, None), "timerfd_settime")


def open_tun(netns: str, name: str) -> int:
    """Create TUN device ``name`` inside the named network namespace; return its fd."""
    if not name or len(name.encode()) > 15:
        raise EmulatorError(f"TUN name {name!r} must be 1..15 bytes")
    if not os.path.exists(_sys.netns_path(netns)):
        raise EmulatorError(f"network namespace {netns!r} does not exist")
    with _sys.entered(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(
                fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI)
            )
        except OSError:
            os.close(fd)
            raise
    return fd


def serve(emu: Emulator, fd_a: int, fd_b: int, libc: _Libc, control: int | None) -> None:
    """Run the event loop until stdin closes or SIGTERM arrives."""
    tfd = libc.timerfd()
    ep = select.epoll()
    ep.register(fd_a, select.EPOLLIN)
    ep.register(fd_b, select.EPOLLIN)
    ep.register(tfd, select.EPOLLIN)
    if control is not None:
        ep.register(control, select.EPOLLIN)
    index_of = {fd_a: 0, fd_b: 1}
    armed: float | None = None
    control_buf = b""
    clock = time.monotonic
    while True:
        for fd, _ in ep.poll():
            if fd in index_of:
                index = index_of[fd]
                for _ in range(_READ_BATCH):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    emu.receive(index, packet, clock())
            elif fd == tfd:
                with contextlib.suppress(BlockingIOError):
                    os.read(tfd, 8)
                armed = None
            elif fd == control:
                chunk = os.read(control, 4096)
                if not chunk:
                    return
                control_buf += chunk
                while b"\n" in control_buf:
                    line, control_buf = control_buf.split(b"\n", 1)
                    if line.strip() == b"stats":
                        _emit(emu)
        for out_fd, packet in emu.advance(clock()):
            try:
                os.write(out_fd, packet)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO, errno.ENOBUFS, errno.EINVAL):
                    raise
                emu.dirs[0 if out_fd == fd_b else 1].stats.write_errors += 1
        deadline = emu.next_deadline()
        if deadline != armed:
            libc.arm(tfd, deadline)
            armed = deadline


def _emit(emu: Emulator) -> None:
    sys.stdout.write(json.dumps(emu.snapshot()) + "\n")
    sys.stdout.flush()


def _on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds out of epoll.poll(), which would otherwise be retried


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.emulator", description=__doc__)
    parser.add_argument("--a", required=True, metavar="NS:DEV", help="namespace and TUN name a")
    parser.add_argument("--b", required=True, metavar="NS:DEV", help="namespace and TUN name b")
    parser.add_argument("--both", default="", metavar="SPEC", help="spec for both directions")
    parser.add_argument("--ab", default=None, metavar="SPEC", help="spec for a→b")
    parser.add_argument("--ba", default=None, metavar="SPEC", help="spec for b→a")
    parser.add_argument("--seed", type=int, default=None, help="random seed (loss, jitter)")
    parser.add_argument("--no-stdin", action="store_true", help="do not stop at stdin EOF")
    parser.add_argument(
        "--no-realtime", action="store_true", help="stay at normal scheduling priority"
    )
    args = parser.parse_args(argv)
    libc = _Libc()
    parent = os.getppid()
    _sys.die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # parent died before prctl took effect
        return 1
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        ab = LinkSpec.parse(args.ab if args.ab is not None else args.both)
        ba = LinkSpec.parse(args.ba if args.ba is not None else args.both)
        (ns_a, _, dev_a), (ns_b, _, dev_b) = args.a.partition(":"), args.b.partition(":")
        fd_a = open_tun(ns_a, dev_a)
        fd_b = open_tun(ns_b, dev_b)
    except (EmulatorError, OSError) as exc:
        print(f"lab.emulator: {exc}", file=sys.stderr)
        return 2
    if not args.no_realtime:
        # Real-time priority keeps the delay accurate on a busy machine; the emulator only
        # uses the CPU its traffic needs (a quarter of a core at 20 Mbit/s each way).
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    emu = Emulator(fd_a, fd_b, ab, ba, seed=args.seed)
    print("ready", flush=True)
    try:
        serve(emu, fd_a, fd_b, libc, None if args.no_stdin else sys.stdin.fileno())
    finally:
        with contextlib.suppress(OSError, ValueError):
            _emit(emu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
