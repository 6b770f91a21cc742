"""Real agents on loopback: a file survives half of them being killed; quotas; repair."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from node import identity
from node.cli import fetch_json
from node.storage_agent.contracts import Contract
from node.storage_agent.devnet import Devnet, DevnetNode
from node.storage_agent.errors import StorageError
from node.storage_agent.transfer import get_file, put_file
from tests.storage.test_agent_storage import wait_for

MIB = 1024 * 1024


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


def storage_status(node: DevnetNode) -> dict[str, Any]:
    doc: dict[str, Any] = fetch_json(node.web.rstrip("/") + "/api/status", timeout=10)
    return doc["services"]["storage"]


def held_for(node: DevnetNode, client: bytes) -> int:
    """Bytes ``node`` keeps under contract for ``client``."""
    doc = fetch_json(node.web.rstrip("/") + "/api/storage?contracts=100000", timeout=10)
    return sum(c["size"] for c in doc["contracts"] if c["client"] == client.hex())


def key_of(node: DevnetNode) -> bytes:
    return identity.load(node.data_dir / "identity.key").public_key


def test_quota_refuses_one_client_clearly_and_its_failed_put_leaves_nothing(
    tmp_path: Path,
) -> None:
    quota = 3 * MIB + MIB // 2
    extra = f"erasure_k = 2\nerasure_n = 3\nclient_quota_bytes = {quota}\n"
    with Devnet(tmp_path / "net", 3, extra_config=extra) as net:
        assert net.wait_peers(), "devnet nodes did not find each other"
        a, b = net.nodes[1], net.nodes[2]
        key_a = key_of(a)
        # 2.25 MiB of shares per node for client a (one share of each 2 MiB stripe).
        first = tmp_path / "first.bin"
        first.write_bytes(os.urandom(4 * MIB + MIB // 2))
        first_id = put_file(a.web, first, a.token)
        before = [held_for(n, key_a) for n in net.nodes]
        assert all(2 * MIB < h <= quota for h in before), before
        # The second stripe of this one no longer fits on any node: the put fails after its
        # first stripe was placed everywhere.
        second = tmp_path / "second.bin"
        second.write_bytes(os.urandom(3 * MIB + 900 * 1024))
        with pytest.raises(StorageError, match=f"client quota of {quota} bytes is used up"):
            put_file(a.web, second, a.token)
        # Nothing of the failed put stays under contract: its placed shares were released.
        assert [held_for(n, key_a) for n in net.nodes] == before
        assert storage_status(a)["released"] >= 3
        assert sum(storage_status(n)["contracts_released"] for n in net.nodes) >= 3
        # Another client is not affected, and client a can still use what it has left.
        other = tmp_path / "other.bin"
        other.write_bytes(os.urandom(3 * MIB))
        other_id = put_file(b.web, other, b.token)
        small = tmp_path / "small.bin"
        small.write_bytes(os.urandom(MIB))
        put_file(a.web, small, a.token)
        get_file(b.web, other_id, tmp_path / "other.out", b.token)
        assert (tmp_path / "other.out").read_bytes() == other.read_bytes()
        get_file(a.web, first_id, tmp_path / "first.out", a.token)
        assert (tmp_path / "first.out").read_bytes() == first.read_bytes()


def placements(node: DevnetNode) -> list[dict[str, Any]]:
    """The live placements of every file ``node`` put, from its records on disk."""
    out = []
    for path in (node.data_dir / "files").glob("*.json"):
        if path.name in ("channels.json", "releases.json"):
            continue
        out += [p for p in json.loads(path.read_text())["placements"] if not p["lost"]]
    return out


def test_repair_moves_shares_off_offline_and_disqualified_nodes(tmp_path: Path) -> None:
    extra = "erasure_k = 2\nerasure_n = 4\naudit_interval = 1.0\nrepair_after_offline = 3.0\n"
    with Devnet(tmp_path / "net", 6, extra_config=extra) as net:
        assert net.wait_peers(), "devnet nodes did not find each other"
        client = net.nodes[1]
        files = []
        for _ in range(12):
            src = tmp_path / f"in{len(files)}.bin"
            src.write_bytes(os.urandom(64 * 1024))
            files.append((put_file(client.web, src, client.token), src))
        placed = placements(client)
        others = [n for n in net.nodes if n is not client]
        shares = {n.index: [p for p in placed if p["node"] == key_of(n).hex()] for n in others}
        # The node holding the most shares loses every one of them (its file records stay
        # intact): failed audits disqualify it, and then even its intact chunks move.
        bad = max(others, key=lambda n: sum(p["num"] >= 0 for p in shares[n.index]))
        assert sum(p["num"] >= 0 for p in shares[bad.index]) >= 6, shares
        intact = [p for p in shares[bad.index] if p["num"] < 0]
        assert intact
        for p in shares[bad.index]:
            if p["num"] >= 0:
                cid = p["chunk"]
                (bad.data_dir / "chunks" / cid[:2] / cid[2:4] / cid).unlink()
        gone = next(n for n in others if n is not bad and shares[n.index])
        net.kill(gone)
        bad_key, gone_key = key_of(bad).hex(), key_of(gone).hex()

        def left() -> list[tuple[str, int]]:
            names = {bad_key: "disqualified", gone_key: "offline"}
            return [(names[p["node"]], p["num"]) for p in placements(client) if p["node"] in names]

        try:
            # a liveness wait: repair rounds are slow on a loaded machine
            wait_for("shares moved off both nodes", lambda: not left(), timeout=240)
        except AssertionError:
            raise AssertionError(f"still placed: {left()}; {storage_status(client)}") from None
        status = storage_status(client)
        assert status["audit_failures"] >= 6 and status["repairs"] >= len(
            shares[bad.index] + shares[gone.index]
        )
        # Every share now sits under a new contract countersigned by its new node.
        for p in placements(client):
            c = Contract.decode(bytes.fromhex(p["contract"]))
            c.check()
            assert c.node_key.hex() == p["node"] and c.chunk_id.hex() == p["chunk"]
        # The moved contracts are given up: the disqualified node, reachable, deletes its
        # shares, intact ones included; the offline one is asked again, across a restart
        # of the client, until it is back and confirms.
        client_key = key_of(client)
        releases = client.data_dir / "files" / "releases.json"

        def pending_on() -> set[str]:
            """The nodes the client still has to release contracts on, from its file."""
            if not releases.exists():
                return {"(none saved yet)"}
            doc = json.loads(releases.read_text())
            return {Contract.decode(bytes.fromhex(r["contract"])).node_key.hex() for r in doc}

        wait_for(
            "the disqualified node released, only the offline one pending",
            lambda: held_for(bad, client_key) == 0 and pending_on() == {gone_key},
        )
        for p in intact:
            cid = p["chunk"]
            assert not (bad.data_dir / "chunks" / cid[:2] / cid[2:4] / cid).exists()
        assert storage_status(client)["releases_pending"] >= len(shares[gone.index])
        net.kill(client, signal.SIGTERM)
        net.start_node(client)
        net.start_node(gone)
        assert net.wait_peers(), "the restarted nodes did not find the others"
        wait_for(
            "the offline node, back, released",
            lambda: (
                held_for(gone, client_key) == 0 and storage_status(client)["releases_pending"] == 0
            ),
            timeout=120,
        )
        net.kill(bad)
        for file_id, src in files[:4]:
            get_file(client.web, file_id, tmp_path / "out.bin", client.token)
            assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
