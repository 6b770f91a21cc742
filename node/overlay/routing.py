"""Kademlia routing table: 256 k-buckets over the XOR distance of node ids.

Policy (defence against floods of fake contacts): a contact enters only after it talked to us
directly (its record is signed and its id is the hash of its key); a full bucket keeps its old
live contacts and parks newcomers in a bounded replacement cache, promoting one only when an
old contact fails; a bucket takes at most ``per_subnet`` contacts from one IPv4 /24 (or IPv6
/48), so one host or network cannot fill it (loopback is exempt for local devnets).
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from node.overlay.records import NodeRecord

ID_BITS = 256
FAILS_TO_EVICT = 2


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(own: bytes, other: bytes) -> int:
    """0 for the farthest half of the id space, 255 for the nearest (-1 for ``own``)."""
    d = distance(own, other)
    return ID_BITS - d.bit_length() if d else -1


def subnet_of(record: NodeRecord) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) of the record's first address, or None."""
    return _subnet(record.addresses[0]) if record.addresses else None


@functools.lru_cache(maxsize=8192)
def _subnet(address: str) -> str | None:
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_loopback:
        return None  # a devnet of many nodes on one host is not an attack
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass
class Contact:
    record: NodeRecord
    last_seen: float
    fails: int = 0
    pinged_at: float = -1.0
    subnet: str | None = None


class Bucket:
    def __init__(self, k: int) -> None:
        self.k = k
        self.contacts: OrderedDict[bytes, Contact] = OrderedDict()  # least recently seen first
        self.replacements: OrderedDict[bytes, NodeRecord] = OrderedDict()
        self.touched = 0.0


class RoutingTable:
    def __init__(self, own_id: bytes, *, k: int = 20, per_subnet: int = 2) -> None:
        self.own_id = own_id
        self.k = k
        self.per_subnet = per_subnet
        self.buckets = [Bucket(k) for _ in range(ID_BITS)]
        self._all: dict[bytes, Contact] = {}

    def __len__(self) -> int:
        return len(self._all)

    def bucket_for(self, node_id: bytes) -> Bucket | None:
        index = bucket_index(self.own_id, node_id)
        return None if index < 0 else self.buckets[index]

    def get(self, node_id: bytes) -> Contact | None:
        bucket = self.bucket_for(node_id)
        return None if bucket is None else bucket.contacts.get(node_id)

    def seen(self, record: NodeRecord, now: float) -> Contact | None:
        """``record``'s node talked to us directly. Returns the contact whose liveness should
        be checked (a ping) when the bucket is full and ``record`` waits as a replacement."""
        node_id = record.node_id
        bucket = self.bucket_for(node_id)
        if bucket is None:
            return None
        bucket.touched = now
        contact = bucket.contacts.get(node_id)
        if contact is not None:
            if record.seq >= contact.record.seq:
                contact.record = record
            contact.last_seen = now
            contact.fails = 0
            bucket.contacts.move_to_end(node_id)
            return None
        subnet = subnet_of(record)
        if subnet is not None and self.per_subnet:
            same = sum(c.subnet == subnet for c in bucket.contacts.values())
            if same >= self.per_subnet:
                return None
        if len(bucket.contacts) < self.k:
            bucket.contacts[node_id] = self._all[node_id] = Contact(record, now, subnet=subnet)
            return None
        bucket.replacements[node_id] = record
        bucket.replacements.move_to_end(node_id)
        while len(bucket.replacements) > self.k:
            bucket.replacements.popitem(last=False)
        oldest = next(iter(bucket.contacts.values()))
        return oldest

    def failed(self, node_id: bytes) -> None:
        """A request to ``node_id`` went unanswered; evict it after repeated failures."""
        bucket = self.bucket_for(node_id)
        if bucket is None:
            return
        bucket.replacements.pop(node_id, None)
        contact = bucket.contacts.get(node_id)
        if contact is None:
            return
        contact.fails += 1
        if contact.fails >= FAILS_TO_EVICT or bucket.replacements:
            del bucket.contacts[node_id]
            del self._all[node_id]
            if bucket.replacements:
                _, record = bucket.replacements.popitem()
                bucket.contacts[record.node_id] = self._all[record.node_id] = Contact(
                    record, contact.last_seen, subnet=subnet_of(record)
                )

    def closest(self, target: bytes, n: int, *, exclude: bytes | None = None) -> list[NodeRecord]:
        t = int.from_bytes(target, "big")
        best = heapq.nsmallest(n + 1, self._all.values(), key=lambda c: c.record.id_int ^ t)
        return [c.record for c in best if c.record.node_id != exclude][:n]

    def all_records(self) -> list[NodeRecord]:
        return [c.record for c in self._all.values()]
