"""NAT traversal: STUN, behaviour discovery, port mapping, hole punching, relaying."""

from node.transport.nat.discovery import Filtering, Mapping, NatClass, NatReport, discover
from node.transport.nat.errors import NatError, PortMapError, RelayError, StunError, StunTimeout

__all__ = [
    "Filtering",
    "Mapping",
    "NatClass",
    "NatError",
    "NatReport",
    "PortMapError",
    "RelayError",
    "StunError",
    "StunTimeout",
    "discover",
]
