"""Exceptions of the overlay (Kademlia DHT, node and provider records)."""

from node.errors import NodeError


class OverlayError(NodeError):
    """Root of overlay errors."""


class WireError(OverlayError, ValueError):
    """A DHT message or record is malformed, unsigned, expired or claims a wrong id."""


class LookupFailed(OverlayError):
    """A DHT lookup found nothing (no contacts, or none answered)."""
