"""Whole agents in the lab: ``bitchat-node run`` processes behind the lab's NAT routers.

Two public agents are the bootstrap peers: every other agent joins the DHT through them,
learns its NAT class from them (each node is a STUN server), holds relay reservations on
them and publishes its signed record. A place of each network kind (public host, a router of
each NAT class, a port-restricted router running miniupnpd) gets an agent; slots 0 and 1 of
a kind sit behind different routers. The test talks to the agents only through their HTTP
API: ``POST /api/network/reach`` makes one agent find another by node id in the DHT, connect
and echo bytes; ``GET /api/network`` shows the path kind of every session.
Used by ``tests/nat/test_agents.py`` and ``bench/nat.py --agents``.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab
from lab.netns import Namespace
from lab.routers import Router, stun_server
from node.cli import init_data_dir
from tests.nat.matrix import KINDS, expected_path
from tests.support import RunningAgent, start_agent

PORT = 7700
WEB = "127.0.0.1:7780"
SHORT = {"public": "pub", "full-cone": "fc", "restricted-cone": "rc",
         "port-restricted-cone": "prc", "symmetric": "sym", "upnp": "upnp"}  # fmt: skip
DIRECT_KINDS = ("direct", "port-mapped")


class AgentError(Exception):
    """An agent did not come up or answered its API with an error."""


@dataclass
class LabAgent:
    """One agent process in a lab namespace, driven through its HTTP API."""

    name: str
    kind: str
    ns: Namespace
    router: Router | None
    process: RunningAgent
    token: str
    history: list[str] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.process.node_id

    @property
    def address(self) -> str:
        return f"{self.ns.addr}:{PORT}"

    def api(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        """GET (or POST ``body``) ``path`` on the agent's dashboard, from inside its namespace."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.process.web.rstrip("/") + path, data=data, headers=headers
        )
        with self.ns.entered():
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                doc = exc.read().decode(errors="replace")
                raise AgentError(f"{self.name} {path}: HTTP {exc.code}: {doc[:500]}") from None

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.api("/api/status")
        return doc

    def paths_to(self, other: LabAgent) -> list[str]:
        """Path kinds of this agent's sessions with ``other``, as ``/api/network`` shows them."""
        peers = self.api("/api/network")["peers"]
        return [p["path"] for p in peers if p["node_id"] == other.node_id]

    def reach(self, other: LabAgent, fresh: bool = False, size: int = 1024) -> dict[str, Any]:
        body = {"node_id": other.node_id, "bytes": size, "fresh": fresh}
        doc: dict[str, Any] = self.api("/api/network/reach", body)
        return doc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.process.poll() is None:
            self.process.stop(sig)


def agent_config(
    bootstrap: Iterable[str], nat: str = "", network: str = "", extra: str = ""
) -> str:
    """config.toml of a lab agent; ``nat`` and ``network`` add keys to those sections,
    ``extra`` adds whole sections."""
    boot = ", ".join(f'"{b}"' for b in bootstrap)
    return f"""[node]
log_level = "debug"

[network]
listen = "0.0.0.0:{PORT}"
bootstrap = [{boot}]
{network}
[nat]
rediscover_s = 600
{nat}
[web]
listen = "{WEB}"
{extra}"""


class AgentLab:
    """Bootstrap/relay agents and one agent per (kind, slot) in a lab."""

    def __init__(
        self, lab: Lab, tmp: Path, *, udp_timeout: int = 30, relays: int = 2, network: str = "",
        extra: str = "",
    ) -> None:  # fmt: skip
        self.lab = lab
        self.network = network
        """Extra [network] keys for every agent."""
        self.extra = extra
        """Extra config sections for every agent."""
        self.tmp = tmp
        self.udp_timeout = udp_timeout
        self.relays: list[LabAgent] = []
        self.agents: dict[tuple[str, int], LabAgent] = {}
        self.n_relays = relays

    @property
    def bootstrap(self) -> list[str]:
        return [r.address for r in self.relays]

    def _start(self, name: str, kind: str, ns: Namespace, router: Router | None,
               bootstrap: list[str], nat: str = "") -> LabAgent:  # fmt: skip
        data_dir = self.tmp / name
        _, token = init_data_dir(data_dir)
        (data_dir / "config.toml").write_text(
            agent_config(bootstrap, nat, self.network, self.extra)
        )
        prefix = ["ip", "netns", "exec", ns.netns]
        run = start_agent(
            data_dir, ["--listen", f"0.0.0.0:{PORT}", "--web", WEB], timeout=60, prefix=prefix
        )
        return LabAgent(name, kind, ns, router, run, token)

    def start_relays(self) -> None:
        """The public bootstrap agents (they also serve STUN and offer relaying)."""
        stun_host, stun_port = stun_server(self.lab)
        hosts = [self.lab.public_host(f"boot{i}") for i in range(self.n_relays)]
        for i, ns in enumerate(hosts):
            others = [f"{h.addr}:{PORT}" for j, h in enumerate(hosts) if j != i]
            # each learns its class from another and the lab's STUN server; the first has no
            # bootstrap peer of its own (the others join through it)
            servers = [others[0], f"{stun_host}:{stun_port}"]
            nat = "stun_servers = [" + ", ".join(f'"{s}"' for s in servers) + "]\n"
            self.relays.append(self._start(f"boot{i}", "public", ns, None, others[:i], nat))

    def place(
        self, kind: str, slot: int, udp_timeout: int | None = None
    ) -> tuple[Namespace, Router | None]:
        name = f"{SHORT[kind]}{slot}"
        if kind == "public":
            return self.lab.public_host(f"h{name}"), None
        nat = "port-restricted-cone" if kind == "upnp" else kind
        timeout = udp_timeout or self.udp_timeout
        router = self.lab.router(
            f"r{name}", nat, upnp=kind == "upnp", udp_timeout=timeout,
            udp_stream_timeout=timeout,
        )  # fmt: skip
        return router.host(f"h{name}"), router

    def add(
        self, cells: Iterable[tuple[str, int]], *, udp_timeout: int | None = None
    ) -> list[LabAgent]:
        """Start an agent for each (kind, slot), in parallel; networks are built first (their
        routers with conntrack UDP timeouts of ``udp_timeout``, default the lab's)."""
        places = {
            (k, s): self.place(k, s, udp_timeout) for k, s in cells if (k, s) not in self.agents
        }

        def one(item: tuple[tuple[str, int], tuple[Namespace, Router | None]]) -> LabAgent:
            (kind, slot), (ns, router) = item
            return self._start(f"{SHORT[kind]}{slot}", kind, ns, router, self.bootstrap)

        with ThreadPoolExecutor(len(places) or 1) as pool:
            started = list(pool.map(one, places.items()))
        for agent in started:
            self.agents[(agent.kind, int(agent.name[-1]))] = agent
        return started

    def wait_ready(self, agents: Iterable[LabAgent], timeout: float = 90.0) -> None:
        """Until each agent knows its NAT class, holds its relay reservations (behind a NAT),
        has its port mapping (UPnP router) and has announced its latest record in the DHT."""
        pending = list(agents)
        deadline = time.monotonic() + timeout
        why: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            for agent in list(pending):
                reason = not_ready(agent, len(self.relays))
                if reason is None:
                    pending.remove(agent)
                else:
                    why[agent.name] = reason
            if pending:
                time.sleep(0.5)
        if pending:
            raise AgentError(
                "agents not ready: " + "; ".join(f"{a.name}: {why.get(a.name)}" for a in pending)
            )

    def stop(self) -> None:
        for agent in [*self.agents.values(), *self.relays]:
            agent.stop()


def not_ready(agent: LabAgent, relays: int) -> str | None:
    """Why ``agent`` is not ready yet (None when it is)."""
    if agent.process.process.poll() is not None:
        raise AgentError(f"{agent.name} exited: {agent.process.log()[-1500:]}")
    services = agent.status()["services"]
    nat, overlay = services["nat"], services["overlay"]
    if nat.get("class") is None:
        return f"no NAT class yet ({nat.get('error')})"
    if nat["class"] != "public" and len(nat["relay_reservations"]) < relays:
        return f"relay reservations {nat['relay_reservations']}"
    if agent.kind == "upnp" and not nat.get("port_mapping"):
        return "no port mapping"
    if not overlay.get("bootstrapped"):
        return "not in the DHT"
    record = overlay["record"]
    if record["announced_seq"] != record["seq"] or record["nat_class"] != nat["class"]:
        return f"record not announced ({record})"
    return None


@dataclass
class AgentCell:
    a: str
    b: str
    want: str
    path_ab: list[str]
    path_ba: list[str]
    reach_ab: dict[str, Any]
    reach_ba: dict[str, Any]
    error: str = ""

    @property
    def path(self) -> str:
        """One word for the cell: the path both ends show, or what went wrong."""
        if self.error:
            return "error"
        kinds = {"direct" if p in DIRECT_KINDS else p for p in self.path_ab + self.path_ba}
        return kinds.pop() if len(kinds) == 1 else "mixed:" + ",".join(sorted(kinds))

    @property
    def ok(self) -> bool:
        return not self.error and self.path == self.want

    def line(self) -> str:
        return (
            f"{self.a:>21} -> {self.b:<21} want {self.want:8} got {self.path:8} "
            f"a sees {self.path_ab} b sees {self.path_ba} "
            f"echo {self.reach_ab.get('echo_s', '-')}s/{self.reach_ba.get('echo_s', '-')}s "
            f"{self.error}"
        )


def run_cell(a: LabAgent, b: LabAgent, fresh: bool = False) -> AgentCell:
    """``a`` reaches ``b`` by node id, then ``b`` reaches ``a`` (data both ways, each side
    starting once); both ends' path kinds come from ``/api/network``."""
    want = expected_path(a.kind, b.kind)
    ab: dict[str, Any] = {}
    ba: dict[str, Any] = {}
    try:
        ab = a.reach(b, fresh=fresh)
        ba = b.reach(a)
        return AgentCell(a.kind, b.kind, want, a.paths_to(b), b.paths_to(a), ab, ba)
    except AgentError as exc:
        return AgentCell(a.kind, b.kind, want, [], [], ab, ba, str(exc))


def fresh_tries(
    a: LabAgent, b: LabAgent, tries: int, pause: float = 1.0
) -> list[dict[str, Any] | str]:
    """``tries`` reachability checks from ``a`` to ``b``, each on a new session (looked up in
    the DHT, connected, echoed, upgrade awaited); an error message for each that failed.

    ``pause`` seconds between tries: a closed session stays CLOSING for three RTOs and counts
    against the transport's limit of 8 sessions per peer, which back-to-back reconnects hit.
    """
    out: list[dict[str, Any] | str] = []
    for i in range(tries):
        if i:
            time.sleep(pause)
        try:
            out.append(a.reach(b, fresh=True))
        except AgentError as exc:
            out.append(str(exc))
    return out


def run_cells(lab: AgentLab, pairs: list[tuple[str, str]], workers: int = 6) -> list[AgentCell]:
    """Run cells (kind of slot 0 -> kind of slot 1) concurrently."""

    def one(pair: tuple[str, str]) -> AgentCell:
        return run_cell(lab.agents[(pair[0], 0)], lab.agents[(pair[1], 1)])

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, pairs))


__all__ = ["KINDS", "AgentCell", "AgentLab", "LabAgent", "fresh_tries", "run_cell", "run_cells"]
