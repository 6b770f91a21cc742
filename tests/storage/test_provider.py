"""The storing side on real files: audits answered from the tree cache (and never from a cache
alone), scrub with the cache beside the chunks, quotas, expiry and release of contracts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from node import state
from node.identity import Identity
from node.storage_agent import audit, index, merkle, scrub, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import ChunkCorrupt, ChunkMissing, StoreFull
from node.storage_agent.ledger import Ledger
from node.storage_agent.provider import Capacity, Provider
from node.storage_agent.store import chunk_id, encode_tree
from node.storage_agent.vouchers import Voucher

NODE = Identity.from_seed(b"P" * 32)
CLIENT = Identity.from_seed(b"Q" * 32)
OTHER = Identity.from_seed(b"R" * 32)
SIZE = 1024 * 1024 + 100


def make(tmp_path: Path, capacity: Capacity | None = None) -> Provider:
    from node.storage_agent.store import ChunkStore

    store = ChunkStore(tmp_path / "disk", NODE.node_id_text)
    store.initialise(expect_existing=False)
    db = state.open_state(tmp_path / "state.db")
    index.setup(db)
    ledger = Ledger(db, NODE.node_id, store.vouchers)
    return Provider(NODE, store, db, ledger, capacity or Capacity(0))


def offer(data: bytes, client: Identity = CLIENT, term: int = 3600) -> Contract:
    now = int(time.time())
    return Contract(chunk_id(data), merkle.root(data), len(data), 10, now, now + term,
                    client.public_key, NODE.public_key).signed_by_client(client)  # fmt: skip


def stored(prov: Provider, data: bytes) -> Contract:
    return prov.store_chunk(offer(data), data, time.time())


def audit_once(prov: Provider, c: Contract, nonce: bytes | None = None) -> audit.AuditResult:
    """One audit through the request handler, judged by a verifier holding only ``c``."""
    auditor = audit.Auditor()
    nonce = nonce or os.urandom(32)
    ch = auditor.challenge(c, nonce, time.time())
    answer = prov.handle(wire.ChallengeMsg(ch), CLIENT.public_key, time.time())
    if isinstance(answer, wire.Proof):
        return auditor.receive(answer.response, time.time())
    assert isinstance(answer, wire.Error)
    result = auditor.refused(nonce, answer.reason)
    assert result is not None
    return result


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_chunk_and_tree_cache_are_written_together(tmp_path: Path) -> None:
    prov = make(tmp_path)
    data = os.urandom(SIZE)
    c = stored(prov, data)
    tree = prov.store.tree_path(c.chunk_id)
    assert tree.is_file() and tree.parent == prov.store.path_of(c.chunk_id).parent
    assert prov.store.load_tree(c.chunk_id, SIZE) == merkle.leaves(data)
    assert list(prov.store.scan()) == [(c.chunk_id, SIZE)]
    assert audit_once(prov, c).outcome is audit.Outcome.SUCCESS
    assert prov.counters.trees_rebuilt == 0


@pytest.mark.parametrize("damage", ["missing", "flipped", "truncated", "wrong leaves"])
def test_bad_tree_cache_is_rebuilt_from_the_chunk(tmp_path: Path, damage: str) -> None:
    prov = make(tmp_path)
    data = os.urandom(SIZE)
    c = stored(prov, data)
    tree = prov.store.tree_path(c.chunk_id)
    if damage == "missing":
        tree.unlink()
    elif damage == "flipped":
        flip(tree, 100)
    elif damage == "truncated":
        tree.write_bytes(tree.read_bytes()[:-40])
    else:
        # A well-formed cache (valid checksum) whose leaves are not the chunk's.
        tree.write_bytes(encode_tree(c.chunk_id, SIZE, merkle.leaves(os.urandom(SIZE))))
    assert audit_once(prov, c).outcome is audit.Outcome.SUCCESS
    assert prov.counters.trees_rebuilt == 1
    assert prov.store.load_tree(c.chunk_id, SIZE) == merkle.leaves(data)
    assert audit_once(prov, c).outcome is audit.Outcome.SUCCESS
    assert prov.counters.trees_rebuilt == 1


def test_a_lost_chunk_is_never_proved_from_its_cache(tmp_path: Path) -> None:
    prov = make(tmp_path)
    c = stored(prov, os.urandom(SIZE))
    prov.store.path_of(c.chunk_id).unlink()
    assert prov.store.tree_path(c.chunk_id).is_file()
    result = audit_once(prov, c)
    assert result.outcome is audit.Outcome.FAIL and "not stored" in result.reason


def test_damaged_sampled_segment_fails_even_with_a_good_cache(tmp_path: Path) -> None:
    prov = make(tmp_path)
    c = stored(prov, os.urandom(SIZE))
    nonce = os.urandom(32)
    idx = audit.sample_indexes(nonce, c.chunk_id, merkle.segment_count(SIZE), 16)
    flip(prov.store.path_of(c.chunk_id), idx[3] * merkle.SEGMENT_SIZE + 7)
    result = audit_once(prov, c, nonce)
    assert result.outcome is audit.Outcome.FAIL and "damaged" in result.reason
    with pytest.raises(ChunkCorrupt):
        prov.prove(audit.Challenge(c.chunk_id, nonce, 16))
    # The cache is not rewritten from damaged bytes.
    assert prov.counters.trees_rebuilt == 0


def test_chunk_replaced_by_other_bytes_fails(tmp_path: Path) -> None:
    prov = make(tmp_path)
    c = stored(prov, os.urandom(SIZE))
    prov.store.path_of(c.chunk_id).write_bytes(os.urandom(SIZE))
    assert audit_once(prov, c).outcome is audit.Outcome.FAIL


def test_proof_from_cache_matches_a_full_rehash(tmp_path: Path) -> None:
    prov = make(tmp_path)
    data = os.urandom(SIZE)
    c = stored(prov, data)
    ch = audit.Challenge(c.chunk_id, os.urandom(32), 16)
    assert prov.prove(ch) == audit.answer(ch, data, NODE)


def test_scrub_catches_damage_despite_cache_and_restores_missing_caches(tmp_path: Path) -> None:
    prov = make(tmp_path)
    good = stored(prov, os.urandom(SIZE))
    bad = stored(prov, os.urandom(SIZE))
    prov.store.tree_path(good.chunk_id).unlink()
    flip(prov.store.path_of(bad.chunk_id), SIZE - 1)
    found: list[bytes] = []
    stats = scrub.ScrubStats()
    assert scrub.scrub_batch(prov, 0.0, 10, found.append, stats) == 2
    assert found == [bad.chunk_id] and stats.damaged == 1 and stats.trees_rebuilt == 1
    assert not prov.store.path_of(bad.chunk_id).exists()
    assert not prov.store.tree_path(bad.chunk_id).exists()
    assert (prov.store.root / scrub.DAMAGED_DIR / bad.chunk_id.hex()).is_file()
    assert prov.store.load_tree(good.chunk_id, SIZE) is not None


def test_client_over_quota_is_refused_clearly_others_are_not(tmp_path: Path) -> None:
    prov = make(tmp_path, Capacity(0, client_quota=3 * 100_000))
    for _ in range(3):
        stored(prov, os.urandom(100_000))
    data = os.urandom(100_000)
    answer = prov.handle(wire.Store(offer(data), data), CLIENT.public_key, time.time())
    assert isinstance(answer, wire.Error) and answer.code is wire.ErrorCode.FULL
    assert "client quota of 300000 bytes is used up" in answer.reason
    assert not prov.store.has(chunk_id(data))
    other = prov.handle(wire.Store(offer(data, OTHER), data), OTHER.public_key, time.time())
    assert isinstance(other, wire.Stored)


def test_quota_holds_for_concurrent_uploads(tmp_path: Path) -> None:
    prov = make(tmp_path, Capacity(0, client_quota=4 * 200_000))
    blobs = [os.urandom(200_000) for _ in range(12)]
    outcomes: list[str] = []

    def up(data: bytes) -> None:
        try:
            stored(prov, data)
            outcomes.append("ok")
        except StoreFull:
            outcomes.append("full")

    threads = [threading.Thread(target=up, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 4 and outcomes.count("full") == 8
    assert index.client_usage(prov.db, CLIENT.public_key) == 4 * 200_000


def test_ended_contracts_are_collected_and_vouchers_kept(tmp_path: Path) -> None:
    prov = make(tmp_path)
    now = time.time()
    short = os.urandom(300_000)
    shared = os.urandom(200_000)
    c_short = prov.store_chunk(offer(short, term=60), short, now)
    c_shared_a = prov.store_chunk(offer(shared, term=60), shared, now)
    c_shared_b = prov.store_chunk(offer(shared, OTHER, term=7200), shared, now)
    v = Voucher(CLIENT.public_key, NODE.node_id, 1, int(now), 500, 0, 0).signed(CLIENT)
    assert isinstance(prov.handle(wire.VoucherMsg(v), CLIENT.public_key, now), wire.Ok)

    assert scrub.collect_garbage(prov, now + 30, orphan_grace=3600) == 0
    assert scrub.next_expiry(prov) == c_short.end
    removed = scrub.collect_garbage(prov, now + 120, orphan_grace=3600)
    assert removed == 3  # two contracts and the chunk only they held
    assert not prov.store.has(c_short.chunk_id)
    assert not prov.store.tree_path(c_short.chunk_id).exists()
    assert not prov.store.contract_path(c_short.id).exists()
    assert not prov.store.contract_path(c_shared_a.id).exists()
    assert prov.store.has(c_shared_b.chunk_id)
    assert index.totals(prov.db) == (1, 200_000)
    assert [c.id for c in index.contracts_for(prov.db, c_shared_b.chunk_id)] == [c_shared_b.id]
    assert audit_once(prov, c_shared_b).outcome is audit.Outcome.SUCCESS
    assert prov.ledger.earnings(now)["all_time"] > 0
    assert list(prov.store.vouchers.glob("*.log"))
    # A rebuilt index does not bring the collected contracts back.
    db2 = state.open_state(tmp_path / "rebuilt.db")
    index.setup(db2)
    counts = index.rebuild(db2, prov.store)
    assert counts["chunks"] == 1 and counts["contracts"] == 1


def test_release_needs_the_clients_signature(tmp_path: Path) -> None:
    prov = make(tmp_path)
    data = os.urandom(50_000)
    c = stored(prov, data)
    forged = wire.Release(c.id, OTHER.sign(wire.release_body(c.id)))
    answer = prov.handle(forged, OTHER.public_key, time.time())
    assert isinstance(answer, wire.Error) and "signature" in answer.reason
    assert prov.store.has(c.chunk_id)
    good = wire.Release(c.id, CLIENT.sign(wire.release_body(c.id)))
    assert isinstance(prov.handle(good, CLIENT.public_key, time.time()), wire.Ok)
    assert not prov.store.has(c.chunk_id) and index.totals(prov.db) == (0, 0)
    assert not prov.store.contract_path(c.id).exists()
    with pytest.raises(ChunkMissing):
        prov.store.read(c.chunk_id)
    # Releasing again is harmless.
    assert isinstance(prov.handle(good, CLIENT.public_key, time.time()), wire.Ok)


def test_release_works_while_the_index_lacks_the_contract(tmp_path: Path) -> None:
    prov = make(tmp_path)
    c = stored(prov, os.urandom(30_000))
    with prov.db.conn:
        index.remove_contract(prov.db, c.id.hex())  # as if state.db were being rebuilt
    good = wire.Release(c.id, CLIENT.sign(wire.release_body(c.id)))
    assert isinstance(prov.handle(good, CLIENT.public_key, time.time()), wire.Ok)
    assert not prov.store.has(c.chunk_id) and not prov.store.contract_path(c.id).exists()
