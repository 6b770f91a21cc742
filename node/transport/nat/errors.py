"""Exceptions of NAT traversal (STUN, port mapping, hole punching, relaying)."""

from node.errors import NodeError


class NatError(NodeError):
    """Root of NAT traversal errors."""


class StunError(NatError, ValueError):
    """A STUN message is malformed or fails its integrity check."""


class StunTimeout(NatError, TimeoutError):
    """A STUN transaction got no answer after every retransmission."""


class PortMapError(NatError):
    """The router refused or does not offer a port mapping."""


class RelayError(NatError):
    """A relay refused, dropped or limited a relayed connection."""
