"""Proof of storage: honest answers pass, forged/replayed/late/lossy ones do not."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.identity import Identity
from node.storage_agent import audit, merkle
from node.storage_agent.audit import Auditor, Challenge, Outcome, Response
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import ProofError, ProtocolError
from node.storage_agent.store import chunk_id

CLIENT = Identity.from_seed(b"c" * 32)
NODE = Identity.from_seed(b"n" * 32)
OTHER = Identity.from_seed(b"o" * 32)


def contract_for(data: bytes, node: Identity = NODE) -> Contract:
    c = Contract(chunk_id(data), merkle.root(data), len(data), 1000, 100, 10_000,
                 CLIENT.public_key, node.public_key)  # fmt: skip
    return c.signed_by_client(CLIENT).signed_by_node(node)


def test_contract_signatures_and_encoding_round_trip() -> None:
    data = os.urandom(10_000)
    c = contract_for(data)
    c.check()
    assert Contract.decode(c.encode()) == c
    with pytest.raises(ProofError, match="signature"):
        replace(c, price=1).check()
    with pytest.raises(ProofError, match="node signature"):
        replace(c, node_sig=bytes(64)).check()
    with pytest.raises(ProofError, match="client signature"):
        replace(c, client_sig=bytes(64)).check()


def test_honest_node_passes() -> None:
    data = os.urandom(4 * 1024 * 1024)
    c = contract_for(data)
    auditor = Auditor()
    ch = auditor.challenge(c, os.urandom(32), now=0.0)
    resp = Response.decode(audit.answer(Challenge.decode(ch.encode()), data, NODE).encode())
    result = auditor.receive(resp, now=1.0)
    assert result.outcome is Outcome.SUCCESS
    assert auditor.open_challenges == 0


def test_replayed_proof_is_rejected() -> None:
    data = os.urandom(50_000)
    c = contract_for(data)
    auditor = Auditor()
    ch = auditor.challenge(c, os.urandom(32), now=0.0)
    resp = audit.answer(ch, data, NODE)
    assert auditor.receive(resp, 1.0).outcome is Outcome.SUCCESS
    with pytest.raises(ProofError, match="unknown or already answered"):
        auditor.receive(resp, 2.0)
    # An old proof does not answer a new challenge either.
    auditor.challenge(c, os.urandom(32), now=3.0)
    with pytest.raises(ProofError):
        auditor.receive(resp, 4.0)


def test_late_proof_is_a_timeout() -> None:
    data = os.urandom(50_000)
    c = contract_for(data)
    auditor = Auditor(deadline=10.0)
    ch = auditor.challenge(c, os.urandom(32), now=100.0)
    assert auditor.receive(audit.answer(ch, data, NODE), 110.5).outcome is Outcome.TIMEOUT
    ch2 = auditor.challenge(c, os.urandom(32), now=200.0)
    assert auditor.next_deadline() == 210.0
    assert [r.outcome for r in auditor.expire(211.0)] == [Outcome.TIMEOUT]
    assert auditor.unreachable(ch2.nonce) is None


def test_forged_proofs_fail() -> None:
    data = os.urandom(50_000)
    c = contract_for(data)
    auditor = Auditor()
    # Signed by another key.
    ch = auditor.challenge(c, os.urandom(32), now=0.0)
    assert auditor.receive(audit.answer(ch, data, OTHER), 1.0).outcome is Outcome.FAIL
    # Right key, other data.
    ch = auditor.challenge(c, os.urandom(32), now=0.0)
    assert auditor.receive(audit.answer(ch, os.urandom(50_000), NODE), 1.0).outcome is Outcome.FAIL
    # Segments swapped for proved ones from other indexes, re-signed.
    ch = auditor.challenge(c, os.urandom(32), now=0.0)
    good = audit.answer(ch, data, NODE)
    segs = (good.segments[1], good.segments[0], *good.segments[2:])
    forged = Response(good.chunk_id, good.nonce, segs, good.paths, b"")
    forged = replace(forged, signature=NODE.sign(forged.digest()))
    if segs != good.segments:
        assert auditor.receive(forged, 1.0).outcome is Outcome.FAIL


def test_lossy_node_fails_at_the_predicted_rate() -> None:
    """A node that lost 10 % of its segments fails an audit of k samples w.p. 1-(0.9)^k."""
    rng = random.Random(7)
    data = rng.randbytes(256 * 4096)
    c = contract_for(data)
    count = merkle.segment_count(len(data))
    lost = set(rng.sample(range(count), count // 10))
    f = len(lost) / count
    # The node answers lost segments with zeros (it has nothing better).
    damaged = b"".join(bytes(4096) if i in lost else merkle.segment(data, i) for i in range(count))
    tree = merkle.levels(data)
    samples = 8
    auditor = Auditor(samples=samples)
    trials, fails = 600, 0
    for _ in range(trials):
        ch = auditor.challenge(c, rng.randbytes(32), now=0.0)
        idx = audit.sample_indexes(ch.nonce, ch.chunk_id, count, samples)
        segs = tuple(merkle.segment(damaged, i) for i in idx)
        paths = tuple(tuple(merkle.proof(tree, i)) for i in idx)
        r = Response(ch.chunk_id, ch.nonce, segs, paths, b"")
        r = replace(r, signature=NODE.sign(r.digest()))
        fails += auditor.receive(r, 1.0).outcome is Outcome.FAIL
    expected = audit.detection_probability(f, samples)
    sd = (expected * (1 - expected) / trials) ** 0.5
    assert abs(fails / trials - expected) < 4 * sd


@given(st.binary(max_size=300))
def test_challenge_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Challenge.decode(data)


@given(st.binary(max_size=2000))
def test_response_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Response.decode(data)


@given(st.binary(max_size=600))
def test_contract_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Contract.decode(data)
