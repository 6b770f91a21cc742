"""Run inside a fresh network namespace (``unshare -n``): a LAN link, a real agent on it, and
an mDNS browser that looks the agent up; prints what it found as one JSON line.

Used by test_mdns.py; the namespace keeps the announcement off the machine's real network.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from zeroconf import IPVersion, Zeroconf

from node.cli import init_data_dir
from node.web.mdns import SERVICE_TYPE, instance_label
from tests.support import start_agent

LAN_ADDRESS = "10.99.0.1"


def main() -> None:
    for cmd in (
        "ip link set lo up",
        "ip link add v0 type veth peer name v1",
        "ip link set v0 up",
        "ip link set v1 up",
        f"ip addr add {LAN_ADDRESS}/24 dev v0",
    ):
        subprocess.run(cmd.split(), check=True)
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp) / "box"
        init_data_dir(box)
        agent = start_agent(box, ["--web", "0.0.0.0:0"])
        try:
            port = int(agent.web.rstrip("/").rsplit(":", 1)[1])
            label = instance_label(socket.gethostname())
            zc = Zeroconf(interfaces=[LAN_ADDRESS], ip_version=IPVersion.V4Only)
            try:
                info = zc.get_service_info(SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", timeout=20_000)
            finally:
                zc.close()
            found = None
            if info is not None:
                found = {
                    "name": info.name,
                    "server": info.server,
                    "port": info.port,
                    "addresses": info.parsed_addresses(),
                    "properties": {
                        k.decode(): (v or b"").decode() for k, v in info.properties.items()
                    },
                }
            # The page answers under <hostname>.local, the name mDNS gives it.
            req = urllib.request.Request(
                f"http://{LAN_ADDRESS}:{port}/api/status",
                headers={"Host": f"{label}.local:{port}"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                status = json.load(resp)
            print(json.dumps({"port": port, "label": label, "node_id": agent.node_id,
                              "found": found, "status_node_id": status["node_id"],
                              "web": status["services"]["web"]}))  # fmt: skip
        finally:
            agent.stop()


if __name__ == "__main__":
    sys.exit(main())
