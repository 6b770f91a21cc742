"""Audits: prove that a node still holds a chunk, checked with nothing but the contract.

Theory of operation. The verifier picks a fresh random nonce; the segment indexes to prove
are derived from the nonce and the chunk id (so the node cannot choose them). The node answers
with those segments, a Merkle path for each, and an Ed25519 signature over the chunk id, the
nonce and the hash of the answer. The verifier accepts only an answer to a nonce it issued
and has not seen answered (no replay), received before the deadline (not late), signed by the
contract's node key (not forged), whose paths lead to the contract's root. If a fraction ``f``
of the chunk's segments is missing, an audit of ``k`` segments catches it with probability
``1 - (1 - f) ** k``.

:class:`Auditor` is the verifier's sans-I/O core: methods take ``now`` and return outcomes.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from node import identity
from node.storage_agent import merkle
from node.storage_agent._buffer import Reader, Writer
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import ProofError, ProtocolError

DEFAULT_SAMPLES = 16
MAX_SAMPLES = 64
DEFAULT_DEADLINE = 10.0
"""Seconds a node has to answer a challenge."""
NONCE_LEN = 32
_DOMAIN = b"bitchat-audit-v1"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAIL = "fail"
    OFFLINE = "offline"
    TIMEOUT = "timeout"


def sample_indexes(nonce: bytes, chunk_id: bytes, count: int, samples: int) -> list[int]:
    """Segment indexes an audit asks for, derived from the nonce (with replacement)."""
    out = []
    for i in range(samples):
        h = hashlib.blake2b(nonce + chunk_id + i.to_bytes(2, "big"), digest_size=8).digest()
        out.append(int.from_bytes(h, "big") % count)
    return out


def detection_probability(missing_fraction: float, samples: int) -> float:
    """Chance that one audit of ``samples`` segments catches a fraction of missing data."""
    return 1.0 - (1.0 - missing_fraction) ** samples


@dataclass(frozen=True, slots=True)
class Challenge:
    chunk_id: bytes
    nonce: bytes
    samples: int

    def encode(self) -> bytes:
        return (
            Writer().push_bytes(self.chunk_id).push_bytes(self.nonce).push_u8(self.samples).data()
        )

    @classmethod
    def decode(cls, data: bytes) -> Challenge:
        r = Reader(data, "audit challenge")
        c = cls(r.pull_bytes(32), r.pull_bytes(NONCE_LEN), r.pull_u8())
        r.end()
        if not 1 <= c.samples <= MAX_SAMPLES:
            raise ProtocolError(f"audit challenge: {c.samples} samples, allowed 1-{MAX_SAMPLES}")
        return c


@dataclass(frozen=True, slots=True)
class Response:
    chunk_id: bytes
    nonce: bytes
    segments: tuple[bytes, ...]
    paths: tuple[tuple[bytes, ...], ...]
    signature: bytes

    def digest(self) -> bytes:
        h = hashlib.blake2b(_DOMAIN + self.chunk_id + self.nonce, digest_size=32)
        for seg, path in zip(self.segments, self.paths, strict=True):
            h.update(len(seg).to_bytes(4, "big") + seg)
            h.update(len(path).to_bytes(1, "big") + b"".join(path))
        return h.digest()

    def encode(self) -> bytes:
        w = Writer().push_bytes(self.chunk_id).push_bytes(self.nonce).push_u8(len(self.segments))
        for seg, path in zip(self.segments, self.paths, strict=True):
            w.push_blob(seg).push_u8(len(path))
            for node in path:
                w.push_bytes(node)
        return w.push_bytes(self.signature).data()

    @classmethod
    def decode(cls, data: bytes) -> Response:
        r = Reader(data, "audit response")
        chunk_id, nonce, n = r.pull_bytes(32), r.pull_bytes(NONCE_LEN), r.pull_u8()
        if n > MAX_SAMPLES:
            raise ProtocolError(f"audit response: {n} segments, allowed at most {MAX_SAMPLES}")
        segs, paths = [], []
        for _ in range(n):
            segs.append(r.pull_blob(merkle.SEGMENT_SIZE))
            depth = r.pull_u8()
            if depth > 40:
                raise ProtocolError(f"audit response: Merkle path of {depth} nodes is too long")
            paths.append(tuple(r.pull_bytes(merkle.HASH_LEN) for _ in range(depth)))
        sig = r.pull_bytes(64)
        r.end()
        return cls(chunk_id, nonce, tuple(segs), tuple(paths), sig)


def answer(challenge: Challenge, data: bytes, node: identity.Identity) -> Response:
    """The node's side: prove the sampled segments of ``data``."""
    tree = merkle.levels(data)
    idx = sample_indexes(challenge.nonce, challenge.chunk_id, len(tree[0]), challenge.samples)
    return respond(challenge, tree, [merkle.segment(data, i) for i in idx], node)


def respond(
    challenge: Challenge, tree: list[list[bytes]], segments: list[bytes], node: identity.Identity
) -> Response:
    """The signed answer: ``segments`` (in the order of :func:`sample_indexes`) with paths."""
    idx = sample_indexes(challenge.nonce, challenge.chunk_id, len(tree[0]), challenge.samples)
    segs = tuple(segments)
    paths = tuple(tuple(merkle.proof(tree, i)) for i in idx)
    unsigned = Response(challenge.chunk_id, challenge.nonce, segs, paths, b"")
    return Response(challenge.chunk_id, challenge.nonce, segs, paths, node.sign(unsigned.digest()))


def check_response(contract: Contract, challenge: Challenge, response: Response) -> None:
    """Raise :class:`ProofError` unless ``response`` proves ``challenge`` under ``contract``."""
    if response.chunk_id != contract.chunk_id or response.nonce != challenge.nonce:
        raise ProofError("audit: response is for another chunk or another challenge")
    if not identity.verify(contract.node_key, response.digest(), response.signature):
        raise ProofError("audit: response signature is not the contract node's")
    count = merkle.segment_count(contract.size)
    idx = sample_indexes(challenge.nonce, contract.chunk_id, count, challenge.samples)
    if len(response.segments) != len(idx):
        raise ProofError(f"audit: {len(response.segments)} segments, expected {len(idx)}")
    for i, seg, path in zip(idx, response.segments, response.paths, strict=True):
        want = min(merkle.SEGMENT_SIZE, contract.size - i * merkle.SEGMENT_SIZE)
        if len(seg) != max(0, want):
            raise ProofError(f"audit: segment {i} has {len(seg)} bytes, expected {want}")
        if not merkle.verify(contract.root, i, count, seg, list(path)):
            raise ProofError(f"audit: segment {i} does not match the contract's Merkle root")


@dataclass
class _Pending:
    contract: Contract
    challenge: Challenge
    deadline: float


@dataclass(frozen=True, slots=True)
class AuditResult:
    contract_id: bytes
    node_key: bytes
    outcome: Outcome
    reason: str = ""


@dataclass
class Auditor:
    """The verifier's bookkeeping of open challenges (sans-I/O)."""

    deadline: float = DEFAULT_DEADLINE
    samples: int = DEFAULT_SAMPLES
    _pending: dict[bytes, _Pending] = field(default_factory=dict)

    def challenge(self, contract: Contract, nonce: bytes, now: float) -> Challenge:
        """Open a challenge; ``nonce`` must be fresh random bytes from the caller."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        ch = Challenge(contract.chunk_id, nonce, self.samples)
        self._pending[nonce] = _Pending(contract, ch, now + self.deadline)
        return ch

    def receive(self, response: Response, now: float) -> AuditResult:
        """Judge an answer; unknown (forged or replayed) nonces raise :class:`ProofError`."""
        pending = self._pending.pop(response.nonce, None)
        if pending is None:
            raise ProofError("audit: response to an unknown or already answered challenge")
        c = pending.contract
        if now > pending.deadline:
            return AuditResult(c.id, c.node_key, Outcome.TIMEOUT, "answer arrived late")
        try:
            check_response(c, pending.challenge, response)
        except ProofError as exc:
            return AuditResult(c.id, c.node_key, Outcome.FAIL, str(exc))
        return AuditResult(c.id, c.node_key, Outcome.SUCCESS)

    def unreachable(self, nonce: bytes) -> AuditResult | None:
        """The node could not be reached for this challenge."""
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return None
        c = pending.contract
        return AuditResult(c.id, c.node_key, Outcome.OFFLINE, "node unreachable")

    def refused(self, nonce: bytes, reason: str) -> AuditResult | None:
        """The node answered that it does not have the chunk (counts as a failure)."""
        pending = self._pending.pop(nonce, None)
        if pending is None:
            return None
        c = pending.contract
        return AuditResult(c.id, c.node_key, Outcome.FAIL, reason)

    def expire(self, now: float) -> list[AuditResult]:
        """Time out every challenge past its deadline."""
        late = [n for n, p in self._pending.items() if now > p.deadline]
        out = []
        for nonce in late:
            p = self._pending.pop(nonce)
            out.append(
                AuditResult(p.contract.id, p.contract.node_key, Outcome.TIMEOUT, "no answer")
            )
        return out

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    @property
    def open_challenges(self) -> int:
        return len(self._pending)
