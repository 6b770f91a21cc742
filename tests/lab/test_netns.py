"""Lab namespaces: connectivity, processes inside them, and cleanup in every way a run ends."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from lab import Lab, LabError, LinkSpec
from lab.netns import REPO_ROOT, lab_namespaces, remove_stale, set_socket_congestion
from tests.lab.conftest import require_lab

IP_RECVERR = 11  # Linux <linux/in.h>: queue ICMP errors for the socket


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


def test_public_hosts_reach_each_other_over_udp_and_tcp(lab: Lab) -> None:
    a, b = lab.public_host("a"), lab.public_host("b")
    assert a.addr.startswith("198.18.") and b.addr.startswith("198.18.")
    server = b.socket()
    server.bind((b.addr, 7000))
    server.settimeout(2)
    client = a.socket()
    client.sendto(b"hello", (b.addr, 7000))
    data, peer = server.recvfrom(100)
    assert (data, peer[0]) == (b"hello", a.addr)

    listener = b.socket(type=socket.SOCK_STREAM)
    listener.bind((b.addr, 7001))
    listener.listen()
    conn = a.socket(type=socket.SOCK_STREAM)
    conn.settimeout(2)
    conn.connect((b.addr, 7001))
    accepted, _ = listener.accept()
    conn.sendall(b"over tcp")
    assert accepted.recv(100) == b"over tcp"
    for s in (server, client, listener, conn, accepted):
        s.close()


def test_python_runs_inside_the_namespace(lab: Lab) -> None:
    a, b = lab.public_host("a"), lab.public_host("b")
    code = textwrap.dedent("""
        import socket, sys
        for addr in sys.argv[1:]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((addr, 0))
                print(addr, "local")
            except OSError:
                print(addr, "foreign")
    """)
    proc = b.python(a.addr, b.addr, code=code, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=20)
    assert out.split("\n")[:2] == [f"{a.addr} foreign", f"{b.addr} local"]
    assert b.run(["ip", "-o", "-4", "addr", "show", "eth0"]).count(b.addr) == 1


def test_lab_modules_import_inside_namespaces(lab: Lab) -> None:
    a = lab.namespace("a")
    proc = a.python(code="import lab, node; print('ok')", stdout=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=20)[0].strip() == "ok"


def test_tcp_congestion_control_is_per_namespace(lab: Lab) -> None:
    a, b = lab.namespace("a"), lab.namespace("b")
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        host_default = f.read().strip()
    a.set_tcp_congestion("reno")
    assert a.read_sysctl("net.ipv4.tcp_congestion_control") == "reno"
    assert b.read_sysctl("net.ipv4.tcp_congestion_control") == host_default
    with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as f:
        allowed = f.read().split()
    if "cubic" not in allowed:
        with pytest.raises(LabError, match="per socket"):
            a.set_tcp_congestion("cubic")
    sock = a.socket(type=socket.SOCK_STREAM)
    set_socket_congestion(sock, "cubic")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0") == b"cubic"
    sock.close()


def test_nothing_is_routed_to_the_host(lab: Lab) -> None:
    before = host_links()
    a = lab.public_host("a")
    lab.router("home", "full-cone").host("h")
    assert host_links() == before
    core_routes = lab.internet().ip("route", "show")
    assert "default" not in core_routes
    # Anything outside the lab's subnets is unreachable from inside: the core says so.
    s = a.socket()
    s.settimeout(2)
    s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)  # report ICMP net-unreachable
    s.connect(("192.0.2.1", 9))
    s.send(b"x")
    with pytest.raises(OSError) as raised:
        s.recv(10)
    assert raised.value.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    s.close()


def test_names_are_checked(lab: Lab) -> None:
    lab.namespace("a")
    with pytest.raises(LabError, match="already exists"):
        lab.namespace("a")
    with pytest.raises(LabError, match="namespace name"):
        lab.namespace("Bad Name")


def test_everything_is_removed_after_an_exception() -> None:
    require_lab()
    before = host_links()
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        prefix = lab.prefix
        lab.router("home", "symmetric").host("h")
        lab.link(lab.namespace("x"), lab.namespace("y"), emulate=LinkSpec(delay_ms=1))
        lab.public_host("p")
        assert len([n for n in lab_namespaces() if n.startswith(prefix)]) == 6
        raise RuntimeError("boom")
    assert [n for n in lab_namespaces() if n.startswith(prefix)] == []
    assert host_links() == before
    lab.close()  # idempotent
    with pytest.raises(LabError, match="closed"):
        lab.namespace("late")


SCRIPT = """
import sys, time
from lab import Lab, LinkSpec
with Lab() as lab:
    lab.router("home", "port-restricted-cone").host("h")
    link = lab.link(lab.namespace("x"), lab.namespace("y"), emulate=LinkSpec(delay_ms=5))
    sleeper = lab.namespace("z").popen(["sleep", "600"])
    print(lab.prefix, link.emulator.proc.pid, sleeper.pid, flush=True)
    time.sleep(600)
"""


def start_owner() -> tuple[subprocess.Popen[str], str, int, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    prefix, emulator, sleeper = proc.stdout.readline().split()
    assert len([n for n in lab_namespaces() if n.startswith(prefix)]) == 6
    return proc, prefix, int(emulator), int(sleeper)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_sigterm_of_the_owner_removes_everything() -> None:
    require_lab()
    proc, prefix, emulator, sleeper = start_owner()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert [n for n in lab_namespaces() if n.startswith(prefix)] == []
    assert gone(emulator) and gone(sleeper)


def test_a_killed_owner_is_cleaned_up_by_the_next_lab() -> None:
    require_lab()
    proc, prefix, emulator, sleeper = start_owner()
    proc.kill()
    proc.wait(10)
    # Its children die with it; its namespaces are left for the next run to remove.
    for pid in (emulator, sleeper):
        for _ in range(100):
            if gone(pid):
                break
            os.sched_yield()
            subprocess.run(["sleep", "0.05"])
        assert gone(pid)
    removed = remove_stale()
    assert len([n for n in removed if n.startswith(prefix)]) == 6
    assert [n for n in lab_namespaces() if n.startswith(prefix)] == []
