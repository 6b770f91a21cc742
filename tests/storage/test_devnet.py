"""Eight real agents on loopback: a file survives four of them being killed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.cli import fetch_json
from node.storage_agent.devnet import Devnet, DevnetNode
from node.storage_agent.transfer import get_file, put_file


def peers(node: DevnetNode) -> int:
    doc = fetch_json(node.web.rstrip("/") + "/api/status")
    return int(doc["services"]["storage"]["peers"])


def test_put_get_through_8_nodes_with_4_killed(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with Devnet(tmp_path / "net", 8) as net:
        deadline = time.monotonic() + 60
        while not all(peers(n) == 8 for n in net.nodes):
            assert time.monotonic() < deadline, "devnet nodes did not find each other"
            time.sleep(0.5)
        placer, other = net.nodes[1], net.nodes[2]
        file_id = put_file(placer.web, src, placer.token)
        for node in net.nodes[4:]:
            net.kill(node)
        get_file(placer.web, file_id, tmp_path / "out1.bin", placer.token)
        assert (tmp_path / "out1.bin").read_bytes() == src.read_bytes()
        # An agent that did not place the file finds the record and shares by asking around.
        get_file(other.web, file_id, tmp_path / "out2.bin", other.token)
        assert (tmp_path / "out2.bin").read_bytes() == src.read_bytes()
