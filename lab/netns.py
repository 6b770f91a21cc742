"""Network namespaces, links and processes for tests and benchmarks: the ``Lab``.

A ``Lab`` is a context manager. Everything it creates (namespaces, veth pairs, emulator
processes, processes started inside namespaces) is removed when it closes, also when the body
raised, and on SIGTERM of the process that owns it. Namespace names carry the owner's pid
(``bl<pid>-<n>-<name>``), so parallel runs never collide and a later run removes what a killed
run left behind. Nothing is connected to the host's own interfaces: the lab's "internet" is a
namespace of its own.

Addresses: "public" links get a /24 each from 198.18.0.0/15 (``.1`` on the first side, ``.2``
on the second); home LANs behind routers are 10.<n>.0.0/24 (see :mod:`lab.routers`).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lab import _sys
from lab.emulator import LinkSpec

if TYPE_CHECKING:
    from lab.routers import Nat, Router

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLIC_POOL = ipaddress.IPv4Network("198.18.0.0/15")
TUN_TXQUEUELEN = 10000
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
_STALE_RE = re.compile(r"^bl(\d+)-\d+-")
_lab_counter = 0
_counter_lock = threading.Lock()


class LabError(Exception):
    """A lab command failed or the lab was used wrongly; the message says which and how."""


Cmd = Sequence[str | os.PathLike[str]]


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cmd(cmd: Cmd, *, input: str | None = None, timeout: float = 30.0) -> str:
    """Run ``cmd`` in the host namespace; return stdout, raise LabError on failure."""
    try:
        done = subprocess.run(
            [str(c) for c in cmd], input=input, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} not found: install iproute2 and nftables") from exc
    if done.returncode != 0:
        shown = " ".join(str(c) for c in cmd)
        raise LabError(f"`{shown}` failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


class Namespace:
    """One network namespace of a lab: a host, a router or the lab's internet core."""

    def __init__(self, lab: Lab, name: str, netns: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.addresses: list[str] = []
        self._ifcount = 0

    def __repr__(self) -> str:
        return f"<Namespace {self.name} {self.addr or '-'}>"

    @property
    def addr(self) -> str:
        """The first address given to this namespace (its public or LAN address)."""
        return self.addresses[0] if self.addresses else ""

    def next_ifname(self, prefix: str) -> str:
        self._ifcount += 1
        return f"{prefix}{self._ifcount}"

    # -- commands -------------------------------------------------------------------------
    def ip(self, *args: str) -> str:
        """Run ``ip -n <ns> ARGS`` and return its output."""
        return run_cmd(["ip", "-n", self.netns, *args])

    def run(self, cmd: Cmd, *, input: str | None = None, timeout: float = 30.0) -> str:
        """Run ``cmd`` inside the namespace, wait, return stdout; raise LabError on failure."""
        return run_cmd(["ip", "netns", "exec", self.netns, *cmd], input=input, timeout=timeout)

    def popen(self, cmd: Cmd, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace; the lab stops it when it closes."""
        return self.lab.popen(["ip", "netns", "exec", self.netns, *cmd], **kwargs)

    def python(
        self, *args: str, code: str | None = None, module: str | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start this interpreter inside the namespace with ``-c code`` or ``-m module``.

        The repository root is on PYTHONPATH, so ``node``, ``lab`` and ``bench`` import.
        """
        if (code is None) == (module is None):
            raise LabError("Namespace.python needs exactly one of code= or module=")
        head = ["-c", code] if code is not None else ["-m", str(module)]
        kwargs.setdefault("env", _python_env())
        return self.popen([sys.executable, *head, *args], **kwargs)

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset (``nft -f -``) in this namespace."""
        self.run(["nft", "-f", "-"], input=ruleset)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside this namespace (see :func:`socket`)."""
        with _sys.entered(self.netns):
            yield

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0
    ) -> socket.socket:
        """A socket created inside this namespace, usable from the calling process.

        ``await loop.create_datagram_endpoint(factory, sock=ns.socket())`` runs a protocol in
        the test's own event loop with its traffic in the lab.
        """
        with self.entered():
            return socket.socket(family, type, proto)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set ``/proc/sys/<key with dots as slashes>`` inside this namespace."""
        path = "/proc/sys/" + key.replace(".", "/")
        with self.entered(), open(path, "w") as f:
            f.write(f"{value}\n")

    def read_sysctl(self, key: str) -> str:
        with self.entered(), open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()

    def set_tcp_congestion(self, algorithm: str) -> None:
        """Default kernel TCP congestion control for sockets created in this namespace.

        Linux lets a namespace other than the host's choose only algorithms listed in the
        host's ``tcp_allowed_congestion_control`` (typically reno and bbr); for any other
        (cubic) set it per socket with :func:`set_socket_congestion`.
        """
        try:
            self.sysctl("net.ipv4.tcp_congestion_control", algorithm)
        except PermissionError:
            raise LabError(
                f"{self.name}: the kernel allows {algorithm!r} as a namespace default only if "
                "the host lists it in net.ipv4.tcp_allowed_congestion_control; set it per "
                "socket with lab.netns.set_socket_congestion instead"
            ) from None

    def default_route(self, via: str) -> None:
        self.ip("route", "replace", "default", "via", via)


def set_socket_congestion(sock: socket.socket, algorithm: str) -> None:
    """Kernel TCP congestion control of one socket (needs CAP_NET_ADMIN for cubic & co)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, algorithm.encode())


class Link:
    """Two interfaces joined either by a veth pair or by an emulator process."""

    def __init__(
        self, a: Namespace, b: Namespace, dev_a: str, dev_b: str, addr_a: str, addr_b: str,
        emulator: Emulator | None,
    ) -> None:  # fmt: skip
        self.a, self.b = a, b
        self.dev_a, self.dev_b = dev_a, dev_b
        self.addr_a, self.addr_b = addr_a, addr_b
        self.emulator = emulator

    def __repr__(self) -> str:
        kind = "emulated" if self.emulator else "veth"
        return f"<Link {kind} {self.a.name}:{self.addr_a} - {self.b.name}:{self.addr_b}>"

    def stats(self) -> dict[str, Any]:
        """The emulator's counters (``ab``, ``ba`` directions); LabError for a veth link."""
        if self.emulator is None:
            raise LabError(f"{self!r} is a plain veth pair: it has no emulator counters")
        return self.emulator.stats()


class Emulator:
    """A running ``python -m lab.emulator`` process."""

    def __init__(self, proc: subprocess.Popen[str], stderr: IO[str]) -> None:
        self.proc = proc
        self._stderr = stderr
        self._lock = threading.Lock()

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read().strip()[-800:]
            raise LabError(f"link emulator stopped or hung (exit {self.proc.poll()}): {err}")
        return line

    def wait_ready(self, timeout: float = 10.0) -> None:
        line = self._readline(timeout)
        if line.strip() != "ready":
            raise LabError(f"link emulator said {line.strip()!r} instead of 'ready'")

    def stats(self) -> dict[str, Any]:
        """Counters per direction and timer lateness, straight from the running process."""
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            result: dict[str, Any] = json.loads(self._readline(10.0))
            return result


class Lab:
    """Namespaces, links, routers and processes that are all removed on close.

    Use as ``with Lab() as lab:``; see docs/lab.md.
    """

    def __init__(self) -> None:
        global _lab_counter
        with _counter_lock:
            _lab_counter += 1
            self.prefix = f"bl{os.getpid()}-{_lab_counter}-"
        self.namespaces: dict[str, Namespace] = {}
        self.links: list[Link] = []
        self.routers: list[Router] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._files: list[IO[Any]] = []
        self._public_subnets: Iterator[ipaddress.IPv4Network] = PUBLIC_POOL.subnets(new_prefix=24)
        next(self._public_subnets)  # 198.18.0.0/24 stays unused
        self._lan_count = 0
        self._internet: Namespace | None = None
        self._closed = False
        self._old_sigterm: Any = None
        self.tmpdir = Path(tempfile.mkdtemp(prefix=self.prefix))

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Lab:
        remove_stale()
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None):
                self._old_sigterm = current
                signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process, delete every namespace (and so every link). Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_sigterm)
        for router in self.routers:
            router.stop()
        _stop_all(self._procs)
        for ns in list(self.namespaces.values()):
            _delete_netns(ns.netns)
        self.namespaces.clear()
        for f in self._files:
            f.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- building --------------------------------------------------------------------------
    def namespace(self, name: str, *, forwarding: bool = False) -> Namespace:
        """A new, empty namespace (loopback up, IPv6 off)."""
        self._check_open()
        if not _NAME_RE.match(name):
            raise LabError(f"namespace name {name!r}: use 1-24 of [a-z0-9_], starting a-z")
        if name in self.namespaces:
            raise LabError(f"namespace {name!r} already exists in this lab")
        ns = Namespace(self, name, self.prefix + name)
        run_cmd(["ip", "netns", "add", ns.netns])
        self.namespaces[name] = ns
        ns.ip("link", "set", "lo", "up")
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        if forwarding:
            ns.sysctl("net.ipv4.ip_forward", 1)
        return ns

    def public_subnet(self) -> ipaddress.IPv4Network:
        """The next free /24 of 198.18.0.0/15."""
        try:
            return next(self._public_subnets)
        except StopIteration:
            raise LabError("the lab ran out of public /24 subnets (512 links)") from None

    def link(
        self,
        a: Namespace,
        b: Namespace,
        *,
        emulate: LinkSpec | tuple[LinkSpec, LinkSpec] | None = None,
        subnet: ipaddress.IPv4Network | None = None,
        dev_a: str | None = None,
        dev_b: str | None = None,
        addr_a: str | None = None,
        addr_b: str | None = None,
        prefixlen: int | None = None,
    ) -> Link:
        """Join ``a`` and ``b`` with addresses ``.1`` and ``.2`` of ``subnet`` (default: the
        next public /24). ``emulate``: one spec for both directions or ``(a→b, b→a)``; the link
        then runs through a ``lab.emulator`` process instead of a veth pair."""
        self._check_open()
        net = subnet or self.public_subnet()
        hosts = net.hosts()
        addr_a = addr_a or str(next(hosts))
        addr_b = addr_b or str(next(hosts))
        plen = prefixlen or net.prefixlen
        emulator = None
        if emulate is None:
            dev_a = dev_a or a.next_ifname("veth")
            dev_b = dev_b or b.next_ifname("veth")
            run_cmd(["ip", "link", "add", "name", dev_a, "netns", a.netns, "type", "veth",
                  "peer", "name", dev_b, "netns", b.netns])  # fmt: skip
        else:
            dev_a = dev_a or a.next_ifname("tun")
            dev_b = dev_b or b.next_ifname("tun")
            ab, ba = emulate if isinstance(emulate, tuple) else (emulate, emulate)
            emulator = self._start_emulator(a, dev_a, b, dev_b, ab, ba)
        for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            ns.ip("addr", "add", f"{addr}/{plen}", "dev", dev)
            if emulator is not None:
                # Bursts must queue in the emulator (whose queue is the one being emulated),
                # not be dropped by the TUN device's own short queue before it.
                ns.ip("link", "set", dev, "txqueuelen", str(TUN_TXQUEUELEN))
            ns.ip("link", "set", dev, "up")
            ns.addresses.append(addr)
        link = Link(a, b, dev_a, dev_b, addr_a, addr_b, emulator)
        self.links.append(link)
        return link

    def _start_emulator(
        self, a: Namespace, dev_a: str, b: Namespace, dev_b: str, ab: LinkSpec, ba: LinkSpec
    ) -> Emulator:
        err = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the lab)
        self._files.append(err)
        cmd = [sys.executable, "-m", "lab.emulator", "--a", f"{a.netns}:{dev_a}",
               "--b", f"{b.netns}:{dev_b}", "--ab", ab.to_arg(), "--ba", ba.to_arg()]  # fmt: skip
        proc = self.popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            env=_python_env(), die_signal=signal.SIGTERM,
        )  # fmt: skip
        emulator = Emulator(proc, err)
        emulator.wait_ready()
        return emulator

    def internet(self) -> Namespace:
        """The lab's internet core: a router namespace that public hosts and routers hang on."""
        if self._internet is None:
            self._internet = self.namespace("internet", forwarding=True)
        return self._internet

    def public_host(
        self, name: str, *, emulate: LinkSpec | tuple[LinkSpec, LinkSpec] | None = None
    ) -> Namespace:
        """A host with a public 198.18.x.2 address on the internet core (no NAT).
        ``emulate`` shapes its access link (first spec: towards the internet)."""
        core = self.internet()
        host = self.namespace(name)
        self.attach(host, core, emulate=emulate, dev="eth0")
        return host

    def attach(
        self,
        ns: Namespace,
        core: Namespace,
        *,
        emulate: LinkSpec | tuple[LinkSpec, LinkSpec] | None = None,
        dev: str = "eth0",
    ) -> Link:
        """Link ``ns`` to ``core`` on a new public /24 (core ``.1``, ``ns`` ``.2``) and make
        the core its default gateway."""
        net = self.public_subnet()
        link = self.link(ns, core, emulate=emulate, subnet=net, dev_a=dev,
                         dev_b=core.next_ifname("p"), addr_a=str(net[2]),
                         addr_b=str(net[1]))  # fmt: skip
        ns.default_route(link.addr_b)
        return link

    def router(self, name: str, nat: Nat | str, **kwargs: Any) -> Router:
        """A home router on the internet core; see :func:`lab.routers.add_router`."""
        from lab.routers import add_router

        return add_router(self, name, nat, **kwargs)

    def next_lan(self) -> int:
        self._lan_count += 1
        if self._lan_count > 250:
            raise LabError("the lab ran out of home LANs (10.1-250.0.0/16)")
        return self._lan_count

    # -- processes -----------------------------------------------------------------------
    def popen(
        self, cmd: Cmd, *, die_signal: int = signal.SIGKILL, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` in the host namespace, tracked and stopped on close.

        The process gets its own session (the lab kills its whole group) and dies with the
        thread that started it, so start lab processes from the main thread.
        """
        self._check_open()
        kwargs.setdefault("stdin", subprocess.DEVNULL)

        def child_setup() -> None:
            _sys.die_with_parent(die_signal)

        proc = subprocess.Popen(
            [str(c) for c in cmd], start_new_session=True, preexec_fn=child_setup, **kwargs
        )
        self._procs.append(proc)
        return proc

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("this Lab is closed; build a new one")


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_all(procs: list[subprocess.Popen[Any]], grace: float = 3.0) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for p in procs:
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _delete_netns(netns: str) -> None:
    """Kill whatever still runs in ``netns`` and delete it (its veths go with it)."""
    with contextlib.suppress(LabError):
        pids = run_cmd(["ip", "netns", "pids", netns]).split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        try:
            run_cmd(["ip", "netns", "del", netns])
            return
        except LabError:
            if not os.path.exists(_sys.netns_path(netns)):
                return
            time.sleep(0.1)


def lab_namespaces() -> list[str]:
    """Names of all lab namespaces on this machine (any owner)."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _STALE_RE.match(n))


def remove_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone; return their names."""
    removed = []
    for name in lab_namespaces():
        m = _STALE_RE.match(name)
        assert m is not None
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _delete_netns(name)
            removed.append(name)
        except PermissionError:
            pass
    return removed
