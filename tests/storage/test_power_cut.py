"""Power cut: kill -9 the agent during uploads; every acknowledged chunk must still prove.

Each round starts the agent, streams STORE requests at it over the real transport, kills it
with SIGKILL at a random moment, restarts it, and audits every chunk acknowledged so far (in
this round and all earlier ones). No chunk file may be partial: each one hashes to its name,
and the upload area is empty after the restart.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from node import identity
from node.identity import Identity
from node.storage_agent import audit, merkle, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.network import EndpointDialer, PeerUnreachable
from node.storage_agent.store import TREE_SUFFIX, chunk_id, decode_tree
from node.transport.endpoint import Endpoint
from tests.storage.conftest import fast_config
from tests.support import RunningAgent, start_agent

CLIENT = Identity.from_seed(b"power-cut-client".ljust(32, b"."))


async def upload_until_killed(
    agent: RunningAgent, node_key: bytes, count: int, rng: random.Random
) -> list[Contract]:
    """Send ``count`` uploads one after another; the agent is killed while one of them, drawn
    at random, is on its way (up to 50 ms after it was sent, so anywhere in its handling)."""
    ep = Endpoint(CLIENT)
    await ep.bind("127.0.0.1", 0)
    dialer = EndpointDialer(ep)
    acked: list[Contract] = []
    loop = asyncio.get_running_loop()
    kill_at = rng.randrange(count)
    try:
        for i in range(count):
            if i == kill_at:
                loop.call_later(rng.uniform(0, 0.05), os.killpg, agent.process.pid, signal.SIGKILL)
            data = rng.randbytes(rng.randint(1, 48 * 1024))
            now = int(time.time())
            offer = Contract(chunk_id(data), merkle.root(data), len(data), 1, now, now + 86400,
                             CLIENT.public_key, node_key).signed_by_client(CLIENT)  # fmt: skip
            try:
                answer = await dialer.request(agent.udp, wire.Store(offer, data), timeout=5.0)
            except PeerUnreachable:
                break
            assert isinstance(answer, wire.Stored), answer
            answer.contract.check()
            acked.append(answer.contract)
    finally:
        await ep.close()
    return acked


async def audit_all(agent: RunningAgent, contracts: list[Contract]) -> None:
    ep = Endpoint(CLIENT)
    await ep.bind("127.0.0.1", 0)
    dialer = EndpointDialer(ep)
    auditor = audit.Auditor(samples=4)
    try:
        for c in contracts:
            ch = auditor.challenge(c, os.urandom(32), time.time())
            answer = await dialer.request(agent.udp, wire.ChallengeMsg(ch), timeout=10.0)
            assert isinstance(answer, wire.Proof), (c.chunk_id.hex(), answer)
            result = auditor.receive(answer.response, time.time())
            assert result.outcome is audit.Outcome.SUCCESS, result.reason
    finally:
        await ep.close()


def check_no_partial_chunks(data_dir: Path) -> int:
    assert list((data_dir / "chunks" / ".tmp").iterdir()) == []
    n = 0
    for f in (data_dir / "chunks").glob("??/??/*"):
        if f.suffix == TREE_SUFFIX:
            # A tree cache is renamed into place after its chunk: never there without it.
            chunk = f.with_suffix("")
            cid = bytes.fromhex(chunk.name)
            decode_tree(cid, chunk.stat().st_size, f.read_bytes())
            continue
        assert chunk_id(f.read_bytes()).hex() == f.name, f"partial or damaged chunk {f}"
        n += 1
    return n


def power_cut_rounds(data_dir: Path, rounds: int, uploads: int, seed: int) -> int:
    fast_config(data_dir)
    rng = random.Random(seed)
    acked: list[Contract] = []
    for _ in range(rounds):
        agent = start_agent(data_dir)
        try:
            node_key = identity.load(data_dir / "identity.key").public_key
            acked += asyncio.run(upload_until_killed(agent, node_key, uploads, rng))
        finally:
            if agent.process.poll() is None:
                os.killpg(agent.process.pid, signal.SIGKILL)
            agent.process.wait(10)
        agent = start_agent(data_dir)
        try:
            assert check_no_partial_chunks(data_dir) >= len({c.chunk_id for c in acked})
            asyncio.run(audit_all(agent, acked))
        finally:
            agent.stop()
    return len(acked)


def test_power_cut_during_uploads(data_dir: Path) -> None:
    acked = power_cut_rounds(data_dir, rounds=5, uploads=200, seed=1)
    print(f"power cut: 5 rounds, {acked} acknowledged chunks, all proved after restarts")
    assert acked > 0


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not os.environ.get("STORAGE_SOAK"), reason="soak run: set STORAGE_SOAK=1")
def test_power_cut_soak(data_dir: Path) -> None:
    started = time.monotonic()
    acked = power_cut_rounds(data_dir, rounds=20, uploads=1000, seed=2)
    print(
        f"power-cut soak: 20 rounds, {acked} acknowledged chunks, all proved after restarts "
        f"({time.monotonic() - started:.0f} s)"
    )
    assert acked > 0
