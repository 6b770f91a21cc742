"""mDNS: a real agent announces itself in a network namespace and a zeroconf browser finds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from node import __version__
from node.web.mdns import SERVICE_TYPE, instance_label, service_info
from tests.support import require_binary, require_root

ROOT = Path(__file__).resolve().parents[2]


def test_agent_is_found_by_mdns_and_answers_as_hostname_local() -> None:
    require_root("a network namespace for the mDNS test")
    unshare = require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    proc = subprocess.run(
        [unshare, "-n", sys.executable, "-m", "tests.web.mdns_probe"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    found = doc["found"]
    assert found is not None, "no answer to the mDNS query"
    assert found["name"] == f"{doc['label']}.{SERVICE_TYPE}"
    assert found["server"] == f"{doc['label']}.local."
    assert found["port"] == doc["port"]
    assert found["addresses"] == ["10.99.0.1"]
    assert found["properties"] == {"node_id": doc["node_id"], "version": __version__, "path": "/"}
    assert doc["status_node_id"] == doc["node_id"]
    assert doc["web"]["mdns"] == f"announced as {found['name']} on 10.99.0.1"


def test_instance_label_is_a_dns_label() -> None:
    assert instance_label("pi-kitchen.fritz.box") == "pi-kitchen"
    assert instance_label("my box_1") == "my-box-1"
    assert instance_label("---") == "bitchat-node"
    assert len(instance_label("x" * 200)) == 63
    info = service_info("pi", 7780, ["192.168.1.5"], "abc", "1.0")
    assert info.type == SERVICE_TYPE
    assert info.properties == {b"node_id": b"abc", b"version": b"1.0", b"path": b"/"}
