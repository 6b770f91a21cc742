"""Exceptions of the transport; all derive from :class:`node.errors.NodeError`."""

from __future__ import annotations

from node.errors import NodeError


class TransportError(NodeError):
    """Root of transport errors."""


class WireError(TransportError, ValueError):
    """A packet or frame is malformed (truncated, oversized, unknown type)."""


class HandshakeError(TransportError):
    """A Noise handshake failed (bad message, wrong key, identity mismatch)."""


class ConnectionClosed(TransportError, ConnectionError):
    """The connection is closed; the message says by whom and why."""


class StreamReset(TransportError, ConnectionError):
    """The peer reset the stream (or refused its protocol)."""
