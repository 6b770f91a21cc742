"""Events a connection core reports to whoever drives it (``next_event()``)."""

from __future__ import annotations

from dataclasses import dataclass


class Event:
    """Base class of transport events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(Event):
    peer_public_key: bytes
    """The peer's Ed25519 public key, checked against its Noise static key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened(Event):
    stream_id: int
    """A stream the peer opened; its data follows in StreamDataReceived."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDataReceived(Event):
    stream_id: int
    """New bytes (or the end of the stream) can be read with ``read_stream``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset(Event):
    stream_id: int
    error_code: int
    """The peer reset its sending side or asked us to stop sending."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamsAvailable(Event):
    """The peer allowed more streams; a blocked ``open_stream`` may retry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DatagramReceived(Event):
    data: bytes
    """Payload of an unreliable datagram."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PathChanged(Event):
    address: tuple[str, int]
    """The peer's address after a validated migration."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated(Event):
    error_code: int
    reason: str
    """Why the connection ended."""
    by_peer: bool
    """True when the peer closed it."""
