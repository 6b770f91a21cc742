"""The overlay: Kademlia DHT over node ids, signed node records and provider records."""

from node.overlay.dht import Kademlia, LookupDone, LookupKind
from node.overlay.errors import LookupFailed, OverlayError, WireError
from node.overlay.records import NodeRecord, sign_record

__all__ = [
    "Kademlia",
    "LookupDone",
    "LookupFailed",
    "LookupKind",
    "NodeRecord",
    "OverlayError",
    "WireError",
    "sign_record",
]
