"""A real agent process storing files on itself: put/get, restart, lost or corrupt state.db,
expiry of contracts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node import identity
from node.cli import fetch_json
from node.errors import NodeError
from node.identity import Identity
from node.storage_agent import merkle, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.network import EndpointDialer
from node.storage_agent.store import chunk_id
from node.storage_agent.vouchers import Voucher
from node.transport.endpoint import Endpoint
from tests.storage.conftest import fast_config
from tests.support import RunningAgent, start_agent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=120
    )


def status(agent: RunningAgent) -> dict[str, Any]:
    doc: dict[str, Any] = fetch_json(agent.web.rstrip("/") + "/api/status", timeout=10)
    return doc["services"]["storage"]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except NodeError:
            pass  # the agent is busy (a loaded machine): ask again
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def put(agent: RunningAgent, path: Path) -> str:
    res = cli("put", str(path), "--data-dir", str(agent.data_dir))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def get(agent: RunningAgent, file_id: str, out: Path) -> subprocess.CompletedProcess[str]:
    return cli("get", file_id, "-o", str(out), "--data-dir", str(agent.data_dir))


def test_put_get_audit_pay_and_rebuild_after_corrupt_state_db(
    data_dir: Path, tmp_path: Path
) -> None:
    fast_config(data_dir)
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(4 * 1024 * 1024 + 123))
    agent = start_agent(data_dir)
    try:
        wait_for("peers", lambda: status(agent)["accepting_peers"] >= 1)
        file_id = put(agent, src)
        assert len(file_id) == 103
        res = get(agent, file_id, tmp_path / "out.bin")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        wait_for("an audit", lambda: status(agent)["audits"] >= 4)
        wait_for("vouchers as audits go on", lambda: status(agent)["vouchers"] >= 3)
        before = status(agent)
        earned = fetch_json(agent.web.rstrip("/") + "/api/status")
        assert before["audit_failures"] == 0
    finally:
        agent.stop()
    assert earned
    chunks = before["chunks"]
    assert chunks == 2 * 8 + 1  # two stripes of 8 shares, plus the file record

    # A wrong key fails cleanly and leaves no file behind.
    agent = start_agent(data_dir)
    try:
        wrong = file_id[:60] + ("a" if file_id[60] != "a" else "b") + file_id[61:]
        res = get(agent, wrong, tmp_path / "bad.bin")
        assert res.returncode == 1 and "authentication" in res.stderr
        assert not list(tmp_path.glob("*bad.bin*"))
    finally:
        agent.stop()

    (data_dir / "state.db").write_bytes(b"garbage" * 1000)
    for extra in ("state.db-wal", "state.db-shm"):
        (data_dir / extra).unlink(missing_ok=True)
    agent = start_agent(data_dir)
    try:
        wait_for("index rebuild", lambda: status(agent)["chunks"] == chunks)
        assert list(data_dir.glob("state.db.corrupt-*"))
        res = get(agent, file_id, tmp_path / "again.bin")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()
        audits = status(agent)["audits"]
        wait_for("audits after rebuild", lambda: status(agent)["audits"] >= audits + 4)
        assert status(agent)["audit_failures"] == 0
        earnings = fetch_json(agent.web.rstrip("/") + "/api/earnings")
        assert earnings.get("all_time", 0) > 0 or earnings.get("available") is False
        export = json.loads(
            subprocess.run(
                ["curl", "-s", agent.web.rstrip("/") + "/api/storage/export"],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert export["vouchers"] and export["vouchers"][0]["total_bct"] > 0
    finally:
        agent.stop()


def test_ended_contracts_are_collected_by_a_running_agent_and_earnings_stay(
    data_dir: Path,
) -> None:
    client = Identity.from_seed(b"gc-client".ljust(32, b"."))
    fast_config(data_dir)
    agent = start_agent(data_dir)
    node_key = identity.load(data_dir / "identity.key").public_key
    short, lasting = os.urandom(300_000), os.urandom(200_000)

    async def upload() -> list[Contract]:
        ep = Endpoint(client)
        await ep.bind("127.0.0.1", 0)
        dialer = EndpointDialer(ep)
        out = []
        try:
            now = int(time.time())
            for data, term in ((short, 4), (lasting, 3600)):
                offer = Contract(chunk_id(data), merkle.root(data), len(data), 10, now,
                                 now + term, client.public_key, node_key)  # fmt: skip
                answer = await dialer.request(
                    agent.udp, wire.Store(offer.signed_by_client(client), data), timeout=20
                )
                assert isinstance(answer, wire.Stored), answer
                out.append(answer.contract)
            v = Voucher(client.public_key, identity.node_id_of(node_key), 1, now, 700, 0, 0)
            answer = await dialer.request(agent.udp, wire.VoucherMsg(v.signed(client)))
            assert isinstance(answer, wire.Ok), answer
        finally:
            await ep.close()
        return out

    try:
        ended, kept = asyncio.run(upload())
        assert status(agent)["chunks"] == 2
        path = data_dir / "chunks" / ended.chunk_id.hex()[:2] / ended.chunk_id.hex()[2:4]
        assert (path / ended.chunk_id.hex()).is_file()
        # Collected within seconds of the term's end (not at the next minute's round).
        wait_for("the ended contract to be collected", lambda: status(agent)["chunks"] == 1, 30)
        assert not (path / ended.chunk_id.hex()).exists()
        assert not (path / (ended.chunk_id.hex() + ".tree")).exists()
        assert not list((data_dir / "contracts").glob(f"*/{ended.id.hex()}"))
        assert status(agent)["collected"] >= 2 and status(agent)["used_bytes"] == len(lasting)
        doc = fetch_json(agent.web.rstrip("/") + "/api/storage?contracts=100")
        assert [c["id"] for c in doc["contracts"]] == [kept.id.hex()]
        earnings = fetch_json(agent.web.rstrip("/") + "/api/earnings")
        assert earnings["all_time"] == 700 / 1_000_000
        assert list((data_dir / "vouchers").glob("*.log"))
    finally:
        agent.stop()
