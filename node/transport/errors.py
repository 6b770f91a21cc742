"""Exceptions of the transport; all derive from :class:`node.errors.NodeError`."""

from __future__ import annotations

from node.errors import NodeError


class TransportError(NodeError):
    """Root of transport errors."""


class WireError(TransportError, ValueError):
    """A packet or frame is malformed (truncated, oversized, unknown type)."""


class HandshakeError(TransportError):
    """A Noise handshake failed (bad message, wrong key, identity mismatch)."""


class PeerKeyChanged(HandshakeError):
    """The peer at the address now holds another key than the one expected (``public_key``)."""

    def __init__(self, message: str, public_key: bytes) -> None:
        super().__init__(message)
        self.public_key = public_key


class ConnectionClosed(TransportError, ConnectionError):
    """The connection is closed; the message says by whom and why."""


class StreamReset(TransportError, ConnectionError):
    """The peer reset the stream (or refused its protocol)."""
