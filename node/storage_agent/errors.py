"""Exceptions of the storage agent."""

from __future__ import annotations

from node.errors import NodeError


class StorageError(NodeError):
    """Root of the storage agent's errors."""


class StoreFull(StorageError):
    """The allocation (or a client's quota) has no room for another chunk."""


class UploadsRefused(StorageError):
    """The node refuses new chunks (degraded disk, heat, owner pause)."""


class ChunkMissing(StorageError, KeyError):
    """A chunk is not in the store."""


class ChunkCorrupt(StorageError):
    """A chunk's bytes do not hash to its id."""


class ProtocolError(StorageError, ValueError):
    """A storage/1 message from a peer is malformed or breaks the protocol."""


class ProofError(StorageError):
    """An audit proof, contract or voucher failed verification."""
