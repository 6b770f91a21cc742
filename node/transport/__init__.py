"""The encrypted UDP transport: wire codec, Noise sessions, streams, congestion control.

The public face is the asyncio API (:class:`Endpoint`, :class:`Connection`, :class:`Stream`);
the sans-I/O cores live in ``connection`` and ``demux``. docs/transport.md has the wire format.
"""

from node.transport.endpoint import Connection, Endpoint, Stream, open_endpoint
from node.transport.errors import (
    ConnectionClosed,
    HandshakeError,
    PeerKeyChanged,
    StreamReset,
    TransportError,
    WireError,
)

__all__ = [
    "Connection",
    "ConnectionClosed",
    "Endpoint",
    "HandshakeError",
    "PeerKeyChanged",
    "Stream",
    "StreamReset",
    "TransportError",
    "WireError",
    "open_endpoint",
]
