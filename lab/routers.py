"""Emulated home routers: one namespace each, NAT classes in nftables, optional miniupnpd.

A router hangs on the lab's internet core with a public WAN address (interface ``wan``) and
serves a home LAN 10.<n>.0.0/24 on a bridge ``lan`` (gateway 10.<n>.0.1). Hosts join with
:meth:`Router.host`. NAT classes (RFC 4787 mapping / filtering), as nftables rules:

- ``full-cone``: endpoint-independent mapping and filtering. Masquerade (which keeps the
  source port) plus a dynamic map ``external port -> internal address . port`` filled by
  outgoing packets and used by a DNAT rule for anything arriving on the WAN.
- ``restricted-cone``: as full cone, but the DNAT only applies to remote addresses the inside
  host has sent to from that port (a second dynamic set ``external port . remote address``).
- ``port-restricted-cone``: plain masquerade; only established/related traffic is forwarded in
  from the WAN (conntrack matches the remote address and port).
- ``symmetric``: ``masquerade random,fully-random``: each new remote endpoint gets a new random
  external port; same filtering as port-restricted.

Every router also drops a configurable share of forwarded packets at random
(``numgen random mod 100 < N``) and has its own conntrack UDP timeouts. A router built with
``upnp=True`` runs miniupnpd (UPnP-IGD, NAT-PMP and PCP) on its LAN side, with its nftables
backend adding the DNAT and filter rules for each mapping.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO, Any

from lab.emulator import LinkSpec
from lab.netns import Lab, LabError, Link, Namespace, run_cmd

STUN_PORT = 3478
NATPMP_PORT = 5351
_DEFAULT_UDP_TIMEOUT = 30
_DEFAULT_UDP_STREAM_TIMEOUT = 120


class Nat(enum.Enum):
    """NAT classes a lab router can emulate."""

    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"

    @property
    def endpoint_independent_mapping(self) -> bool:
        return self is not Nat.SYMMETRIC


def ruleset(
    nat: Nat, lan: str, *, loss_percent: int = 0,
    map_timeout: int = _DEFAULT_UDP_STREAM_TIMEOUT, dnat_accept: bool = False,
) -> str:  # fmt: skip
    """The nftables ruleset of a router of class ``nat`` (WAN interface ``wan``) for inside
    addresses ``lan`` (a prefix). The router's own traffic (miniupnpd's STUN check) is not
    translated. ``dnat_accept`` also forwards inbound traffic that some other rule
    (miniupnpd) DNATed.
    """
    if not 0 <= loss_percent <= 100:
        raise LabError(f"router loss_percent={loss_percent} must be within 0..100")
    cone = nat in (Nat.FULL_CONE, Nat.RESTRICTED_CONE)
    t = f"timeout {map_timeout}s"
    lines = [
        "table ip lab_nat", "delete table ip lab_nat",
        "table inet lab_filter", "delete table inet lab_filter",
        "table ip lab_nat {",
    ]  # fmt: skip
    if cone:
        lines.append(
            f"  map cone {{ type inet_service : ipv4_addr . inet_service; "
            f"flags dynamic,timeout; {t}; }}"
        )
    if nat is Nat.RESTRICTED_CONE:
        lines.append(
            f"  set peers {{ type inet_service . ipv4_addr; flags dynamic,timeout; {t}; }}"
        )
    lines.append("  chain prerouting { type nat hook prerouting priority dstnat; policy accept;")
    if nat is Nat.FULL_CONE:
        lines.append('    iifname "wan" meta l4proto udp dnat ip to udp dport map @cone')
    elif nat is Nat.RESTRICTED_CONE:
        lines.append('    iifname "wan" udp dport . ip saddr @peers dnat ip to udp dport map @cone')
    lines.append("  }")
    masquerade = "masquerade random,fully-random" if nat is Nat.SYMMETRIC else "masquerade"
    lines += [
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "wan" ip saddr {lan} {masquerade}',
        "  }",
    ]
    if cone:
        # After source NAT: the UDP source port is the external one; conntrack still knows the
        # inside address (original direction for outgoing flows, reply for DNATed ones).
        lines.append(
            "  chain track { type filter hook postrouting priority srcnat + 10; policy accept;"
        )
        for way in ("original", "reply"):
            match = f'oifname "wan" ct direction {way} ct {way} ip saddr {lan} meta l4proto udp'
            lines.append(
                f"    {match} update @cone {{ udp sport {t} : ct {way} ip saddr . "
                f"ct {way} proto-src }}"
            )
            if nat is Nat.RESTRICTED_CONE:
                lines.append(f"    {match} update @peers {{ udp sport . ip daddr {t} }}")
        lines.append("  }")
    lines.append("}")
    lines += [
        "table inet lab_filter {",
        "  chain forward { type filter hook forward priority filter; policy drop;",
    ]
    if loss_percent:
        lines.append(f"    numgen random mod 100 < {loss_percent} drop")
    lines += [
        '    iifname != "wan" accept',
        "    ct state established,related accept",
    ]
    if cone or dnat_accept:
        lines.append("    ct status dnat accept")
    lines += [
        "  }",
        "  chain input { type filter hook input priority filter; policy accept;",
        '    iifname "wan" ct state established,related accept',
        '    iifname "wan" meta l4proto icmp accept',
        '    iifname "wan" drop',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class Router:
    """A home router namespace; build it with ``lab.router(name, nat)``."""

    def __init__(
        self, lab: Lab, ns: Namespace, nat: Nat, wan: Link, lan_index: int, loss_percent: int,
        udp_timeout: int, udp_stream_timeout: int,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.ns = ns
        self.nat = nat
        self.wan = wan
        self.lan_index = lan_index
        self.lan_subnet = ipaddress.IPv4Network(f"10.{lan_index}.0.0/24")
        self.lan_gateway = f"10.{lan_index}.0.1"
        self.loss_percent = loss_percent
        self.udp_timeout = udp_timeout
        self.udp_stream_timeout = udp_stream_timeout
        self.hosts: list[Namespace] = []
        self.upnp: Miniupnpd | None = None

    def __repr__(self) -> str:
        return f"<Router {self.ns.name} {self.nat.value} wan={self.wan_addr}>"

    @property
    def wan_addr(self) -> str:
        return self.wan.addr_a

    @property
    def name(self) -> str:
        return self.ns.name

    def host(
        self, name: str, *, emulate: LinkSpec | tuple[LinkSpec, LinkSpec] | None = None
    ) -> Namespace:
        """A new host on this router's LAN (default route via the router).

        Without ``emulate`` it sits on the LAN bridge (10.<n>.0.<k>); with it, it gets its own
        routed link 10.<n>.<k>.0/24 through an emulator (first spec: host -> router).
        """
        host = self.lab.namespace(name)
        k = len(self.hosts) + 1
        if k > 200:
            raise LabError(f"router {self.name}: at most 200 hosts per LAN")
        if emulate is None:
            port = f"lan{k}"
            run_cmd(["ip", "link", "add", "name", "eth0", "netns", host.netns, "type", "veth",
                  "peer", "name", port, "netns", self.ns.netns])  # fmt: skip
            self.ns.ip("link", "set", port, "master", "lan")
            self.ns.ip("link", "set", port, "up")
            addr = f"10.{self.lan_index}.0.{k + 1}"
            host.ip("addr", "add", f"{addr}/24", "dev", "eth0")
            host.ip("link", "set", "eth0", "up")
            host.addresses.append(addr)
            host.default_route(self.lan_gateway)
        else:
            net = ipaddress.IPv4Network(f"10.{self.lan_index}.{k}.0/24")
            link = self.lab.link(host, self.ns, emulate=emulate, subnet=net, dev_a="eth0",
                                 dev_b=f"lt{k}", addr_a=str(net[2]),
                                 addr_b=str(net[1]))  # fmt: skip
            host.default_route(link.addr_b)
        self.hosts.append(host)
        return host

    def reload(self) -> None:
        """(Re)load this router's NAT and filter rules."""
        self.ns.nft(
            ruleset(
                self.nat, f"10.{self.lan_index}.0.0/16", loss_percent=self.loss_percent,
                map_timeout=max(self.udp_timeout, self.udp_stream_timeout),
                dnat_accept=self.upnp is not None,
            )
        )  # fmt: skip

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of forwarded packets (both directions) at random."""
        self.loss_percent = percent
        self.reload()

    def set_udp_timeout(self, seconds: int, stream_seconds: int | None = None) -> None:
        """Conntrack UDP timeouts in this router: unreplied/single flows and streams (flows
        that saw traffic both ways). Mappings of the cone classes expire with them."""
        self.udp_timeout = seconds
        self.udp_stream_timeout = stream_seconds if stream_seconds is not None else seconds
        self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", self.udp_timeout)
        self.ns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", self.udp_stream_timeout)
        self.reload()

    def udp_flows(self, src: str | None = None, dst: str | None = None) -> list[str]:
        """The router's conntrack UDP entries (its NAT bindings), optionally only those whose
        original direction is from ``src`` and/or to ``dst``."""
        cmd = ["conntrack", "-L", "-p", "udp"]
        if src is not None:
            cmd += ["-s", src]
        if dst is not None:
            cmd += ["-d", dst]
        return [line for line in self.ns.run(cmd).splitlines() if line.startswith("udp")]

    def flush_conntrack(self) -> None:
        """Forget every NAT binding now (as a router reboot would)."""
        self.ns.run(["conntrack", "-F"])
        self.reload()

    def stop(self) -> None:
        if self.upnp is not None:
            self.upnp.stop()


def add_router(
    lab: Lab,
    name: str,
    nat: Nat | str,
    *,
    wan_emulate: LinkSpec | tuple[LinkSpec, LinkSpec] | None = None,
    loss_percent: int = 0,
    udp_timeout: int = _DEFAULT_UDP_TIMEOUT,
    udp_stream_timeout: int = _DEFAULT_UDP_STREAM_TIMEOUT,
    upnp: bool = False,
) -> Router:
    """A router of class ``nat`` on the lab's internet; ``upnp`` also runs miniupnpd."""
    nat = Nat(nat)
    ns = lab.namespace(name, forwarding=True)
    wan = lab.attach(ns, lab.internet(), emulate=wan_emulate, dev="wan")
    index = lab.next_lan()
    ns.ip("link", "add", "lan", "type", "bridge")
    ns.ip("addr", "add", f"10.{index}.0.1/24", "dev", "lan")
    ns.ip("link", "set", "lan", "up")
    router = Router(lab, ns, nat, wan, index, loss_percent, udp_timeout, udp_stream_timeout)
    lab.routers.append(router)
    router.reload()
    router.set_udp_timeout(udp_timeout, udp_stream_timeout)
    if upnp:
        router.upnp = Miniupnpd(router, stun_server(lab))
        router.reload()
        router.upnp.start()
    return router


def stun_server(lab: Lab) -> tuple[str, int]:
    """The lab's STUN server (a public host ``stun`` running :mod:`lab.stun`), started once."""
    ns = lab.namespaces.get("stun")
    if ns is None:
        ns = lab.public_host("stun")
        proc = ns.python(f"0.0.0.0:{STUN_PORT}", module="lab.stun", stdout=subprocess.PIPE,
                         text=True)  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise LabError("the lab STUN server did not start")
    return ns.addr, STUN_PORT


def udp_port_bound(ns: Namespace, port: int) -> bool:
    """Whether some socket in ``ns`` is bound to UDP ``port``."""
    with ns.entered(), open("/proc/net/udp") as f:
        return any(line.split()[1].endswith(f":{port:04X}") for line in list(f)[1:])


class Miniupnpd:
    """miniupnpd (Debian's nftables build) serving UPnP-IGD, NAT-PMP and PCP on the LAN."""

    TABLE = "miniupnpd"

    def __init__(self, router: Router, stun: tuple[str, int]) -> None:
        self.router = router
        self.stun = stun
        self.dir = Path(router.lab.tmpdir) / f"miniupnpd-{router.name}"
        self.conf = self.dir / "miniupnpd.conf"
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "miniupnpd.log"

    def config(self) -> str:
        r = self.router
        return "\n".join([
            "ext_ifname=wan",
            "listening_ip=lan",
            "http_port=0",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            "notify_interval=60",
            "clean_ruleset_interval=600",
            f"uuid={uuid.uuid4()}",
            f"lease_file={self.dir / 'leases'}",
            f"upnp_table_name={self.TABLE}",
            f"upnp_nat_table_name={self.TABLE}",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            # 198.18.0.0/15 counts as reserved to miniupnpd: it learns its public address
            # from the lab's STUN server instead, which also proves the WAN is unfiltered.
            "ext_perform_stun=yes",
            f"ext_stun_host={self.stun[0]}",
            f"ext_stun_port={self.stun[1]}",
            f"allow 1024-65535 {r.lan_subnet} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
        ]) + "\n"  # fmt: skip

    def chains(self) -> str:
        """The tables and chains miniupnpd fills (as Debian's nft_init.sh makes them)."""
        t = self.TABLE
        return f"""table inet {t}
delete table inet {t}
table inet {t} {{
  chain forward {{ type filter hook forward priority filter - 5; policy accept;
    jump miniupnpd
  }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept;
    jump prerouting_miniupnpd
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat - 5; policy accept;
    jump postrouting_miniupnpd
  }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}
"""

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("miniupnpd") or "/usr/sbin/miniupnpd"
        if not os.access(binary, os.X_OK):
            raise LabError("miniupnpd not found: install Debian packages miniupnpd "
                           "and miniupnpd-nftables")  # fmt: skip
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config())
        self.router.ns.nft(self.chains())
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = self.router.ns.popen(
            [binary, "-d", "-f", str(self.conf), "-P", str(self.dir / "miniupnpd.pid")],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not udp_port_bound(self.router.ns, NATPMP_PORT):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"miniupnpd did not start on {self.router.name}: "
                               f"{self.log_path.read_text()[-1500:]}")  # fmt: skip
            time.sleep(0.05)

    def rules(self) -> str:
        """miniupnpd's current nftables rules (its DNAT and forward entries)."""
        return self.router.ns.run(["nft", "list", "table", "inet", self.TABLE])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
