"""The placer's own records on the data disk: pending releases survive a restart and reach
a real node once it answers, and any bytes in its files load without an exception (a damaged
record is skipped and logged)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.events import EventLog
from node.identity import Identity
from node.storage_agent import index, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import StorageError
from node.storage_agent.network import Dialer, Peer, PeerUnreachable, TcpDialer, TcpServer
from node.storage_agent.placer import RELEASES, PendingRelease, Placer
from node.storage_agent.store import chunk_id
from tests.storage.test_network import NODE, provider

CLIENT = Identity.generate()


class NoNetwork:
    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = 10.0,
    ) -> wire.Message:  # fmt: skip
        raise AssertionError("loading records must not touch the network")


def placer(root: Path, dialer: Dialer | None = None, peers: tuple[Peer, ...] = ()) -> Placer:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return Placer(
        ident=CLIENT,
        dialer=dialer or NoNetwork(),
        peers=lambda: list(peers),
        files_dir=root / "files",
        tmp_dir=root / "tmp",
        events=EventLog(),
    )


def contract(end: float) -> Contract:
    data = b"share"
    return Contract(
        chunk_id=chunk_id(data), root=bytes(32), size=len(data), price=1,
        start=int(end) - 100, end=int(end), client_key=CLIENT.public_key,
        node_key=NODE.public_key,
    ).signed_by_client(CLIENT)  # fmt: skip


def test_pending_releases_are_saved_and_loaded_again(tmp_path: Path) -> None:
    first = placer(tmp_path)
    first.load()
    c = contract(time.time() + 3600)
    first.releases[c.id] = PendingRelease(c, ("127.0.0.1", 4000))
    first._save_releases()
    again = placer(tmp_path)
    again.load()
    assert again.releases == first.releases
    assert again.status()["releases_pending"] == 1


JSON_DOCS = st.recursive(
    st.none() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["contract", "address", "record", "placements", "seq"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
).map(lambda doc: json.dumps(doc).encode())
BYTES_OR_JSON = st.one_of(st.binary(max_size=300), JSON_DOCS)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(releases=BYTES_OR_JSON, record=BYTES_OR_JSON, channels=BYTES_OR_JSON)
def test_any_bytes_in_the_records_load_without_an_exception(
    tmp_path: Path, releases: bytes, record: bytes, channels: bytes
) -> None:
    p = placer(tmp_path)
    p.files_dir.mkdir(parents=True, exist_ok=True)
    (p.files_dir / RELEASES).write_bytes(releases)
    (p.files_dir / f"{'ab' * 32}.json").write_bytes(record)
    (p.files_dir / "channels.json").write_bytes(channels)
    p.load()
    assert not p.files  # nothing readable was a file record
    assert all(isinstance(r.contract, Contract) for r in p.releases.values())


class LosesStoreAnswers:
    """A real TCP dialer whose STORE answers are lost on the way back: the node stored the
    chunk and signed, the client never heard."""

    def __init__(self) -> None:
        self.inner = TcpDialer()

    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = 10.0,
    ) -> wire.Message:  # fmt: skip
        answer = await self.inner.request(address, msg, peer_key=peer_key, timeout=timeout)
        if isinstance(msg, wire.Store):
            raise PeerUnreachable(f"{address[0]}:{address[1]} did not answer in time")
        return answer


async def test_a_store_whose_answer_was_lost_is_released_once_the_node_answers(
    tmp_path: Path,
) -> None:
    prov = provider(tmp_path / "node")

    def info() -> wire.Info:
        return wire.Info(NODE.public_key, 1 << 30, True)

    server = TcpServer(prov, info, "127.0.0.1", 0)
    addr = await server.start()
    dialer = LosesStoreAnswers()
    client = placer(tmp_path / "client", dialer, (Peer(addr, NODE.public_key),))
    client.settings.k, client.settings.n = 1, 1
    client.load()

    async def one_piece() -> AsyncIterator[bytes]:
        yield b"x" * 5000

    try:
        with pytest.raises(StorageError, match="no node accepted"):
            await client.put(one_piece())
        # The node holds the share under a contract the client never received.
        held = index.list_contracts(prov.db)
        assert len(held) == 1 and client.status()["releases_pending"] == 1
        saved = json.loads((client.files_dir / RELEASES).read_text())
        assert [Contract.decode(bytes.fromhex(r["contract"])).id for r in saved] == [
            next(iter(client.releases))
        ]
        await server.close()
        assert await client.release_round() == 0  # the node is down: kept
        assert client.status()["releases_pending"] == 1
        # The node is back; the client restarted, with the pending release from its file.
        server = TcpServer(prov, info, *addr)
        await server.start()
        again = placer(tmp_path / "client", dialer, (Peer(addr, NODE.public_key),))
        again.load()
        assert await again.release_round() == 1
        assert again.releases == {} and index.list_contracts(prov.db) == []
        assert not any(prov.store.chunks.glob("??/??/*"))
        assert json.loads((again.files_dir / RELEASES).read_text()) == []
    finally:
        await server.close()
