"""Storage contracts: what a node agreed to keep, for whom, for how long and at what price.

A contract names one chunk by its id and Merkle root and is signed by both sides: the client
signs the offer, the node countersigns when it has durably stored the chunk. A verifier holding
only the contract can check audit proofs (root, size, node key). Amounts are integer micro-BCT
(1 BCT = 1,000,000 units) so that sums are exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from node import identity
from node.storage_agent._buffer import Reader, Writer
from node.storage_agent.errors import ProofError

MAX_CHUNK = 4 * 1024 * 1024
"""Largest chunk a node stores (bytes)."""
UNITS_PER_BCT = 1_000_000
_DOMAIN = b"bitchat-contract-v1"
ENCODED_LEN = 32 * 4 + 8 * 4 + 64 * 2


@dataclass(frozen=True, slots=True)
class Contract:
    """One chunk kept by one node for one client."""

    chunk_id: bytes
    """BLAKE2b-256 of the chunk's bytes."""
    root: bytes
    """Merkle root over the chunk's segments."""
    size: int
    """Chunk size in bytes."""
    price: int
    """Total price for the term, micro-BCT."""
    start: int
    """Start of the term, seconds since the epoch."""
    end: int
    """End of the term, seconds since the epoch."""
    client_key: bytes
    """Ed25519 public key of the client (the payer and verifier)."""
    node_key: bytes
    """Ed25519 public key of the storing node."""
    client_sig: bytes = b""
    node_sig: bytes = b""

    def body(self) -> bytes:
        """The signed part."""
        return (
            Writer()
            .push_bytes(_DOMAIN)
            .push_bytes(self.chunk_id)
            .push_bytes(self.root)
            .push_u64(self.size)
            .push_u64(self.price)
            .push_u64(self.start)
            .push_u64(self.end)
            .push_bytes(self.client_key)
            .push_bytes(self.node_key)
            .data()
        )

    @property
    def id(self) -> bytes:
        return hashlib.blake2b(self.body(), digest_size=32).digest()

    def signed_by_client(self, client: identity.Identity) -> Contract:
        if client.public_key != self.client_key:
            raise ProofError("contract: signing identity is not the contract's client")
        return replace(self, client_sig=client.sign(self.body()))

    def signed_by_node(self, node: identity.Identity) -> Contract:
        if node.public_key != self.node_key:
            raise ProofError("contract: signing identity is not the contract's node")
        return replace(self, node_sig=node.sign(self.body()))

    def check(self, *, need_node: bool = True) -> None:
        """Raise :class:`ProofError` unless the fields are sane and the signatures valid."""
        if self.size > MAX_CHUNK:
            raise ProofError(f"contract: chunk size {self.size} exceeds {MAX_CHUNK}")
        if self.end <= self.start:
            raise ProofError("contract: term ends before it starts")
        body = self.body()
        if not identity.verify(self.client_key, body, self.client_sig):
            raise ProofError("contract: bad client signature")
        if need_node and not identity.verify(self.node_key, body, self.node_sig):
            raise ProofError("contract: bad node signature")

    def encode(self) -> bytes:
        return (
            Writer()
            .push_bytes(self.chunk_id)
            .push_bytes(self.root)
            .push_u64(self.size)
            .push_u64(self.price)
            .push_u64(self.start)
            .push_u64(self.end)
            .push_bytes(self.client_key)
            .push_bytes(self.node_key)
            .push_bytes(self.client_sig.ljust(64, b"\0"))
            .push_bytes(self.node_sig.ljust(64, b"\0"))
            .data()
        )

    @classmethod
    def decode(cls, data: bytes) -> Contract:
        r = Reader(data, "contract")
        c = cls(
            chunk_id=r.pull_bytes(32),
            root=r.pull_bytes(32),
            size=r.pull_u64(),
            price=r.pull_u64(),
            start=r.pull_u64(),
            end=r.pull_u64(),
            client_key=r.pull_bytes(32),
            node_key=r.pull_bytes(32),
            client_sig=r.pull_bytes(64),
            node_sig=r.pull_bytes(64),
        )
        r.end()
        if c.node_sig == bytes(64):
            c = replace(c, node_sig=b"")
        return c
