"""Eight real agents on loopback: a file survives four of them being killed."""

from __future__ import annotations

import os
from pathlib import Path

from node.storage_agent.devnet import Devnet
from node.storage_agent.transfer import get_file, put_file


def test_put_get_through_8_nodes_with_4_killed(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with Devnet(tmp_path / "net", 8) as net:
        assert net.wait_peers(), "devnet nodes did not find each other"
        placer, other = net.nodes[1], net.nodes[2]
        file_id = put_file(placer.web, src, placer.token)
        for node in net.nodes[4:]:
            net.kill(node)
        get_file(placer.web, file_id, tmp_path / "out1.bin", placer.token)
        assert (tmp_path / "out1.bin").read_bytes() == src.read_bytes()
        # An agent that did not place the file finds the record and shares by asking around.
        get_file(other.web, file_id, tmp_path / "out2.bin", other.token)
        assert (tmp_path / "out2.bin").read_bytes() == src.read_bytes()
