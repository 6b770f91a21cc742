"""Payment vouchers: cumulative amounts a payer owes a payee on one channel, signed.

A channel is one (payer key, payee node id) pair. Each voucher carries a sequence number and
the running totals per kind of work (storage time proven by audits, bytes served, bytes
relayed) in micro-BCT; the newest voucher of a channel supersedes the others, so losing one in
transit costs nothing. Only the payer's Ed25519 signature makes a voucher worth anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from node import identity
from node.storage_agent._buffer import Reader, Writer
from node.storage_agent.errors import ProofError

_DOMAIN = b"bitchat-voucher-v1"
KINDS = ("storage", "egress", "relay")
ENCODED_LEN = 32 + 32 + 8 * 5 + 64


def channel_id(payer_key: bytes, payee_id: bytes) -> bytes:
    return hashlib.blake2b(payer_key + payee_id, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Voucher:
    payer_key: bytes
    """Ed25519 public key of the payer."""
    payee_id: bytes
    """Node id of the node being paid."""
    seq: int
    """Increases with every voucher of the channel."""
    issued: int
    """Seconds since the epoch when the payer signed it."""
    storage: int
    """Cumulative micro-BCT for storage time proven by audits."""
    egress: int
    """Cumulative micro-BCT for bytes served."""
    relay: int
    """Cumulative micro-BCT for bytes relayed."""
    signature: bytes = b""

    @property
    def channel(self) -> bytes:
        return channel_id(self.payer_key, self.payee_id)

    @property
    def total(self) -> int:
        return self.storage + self.egress + self.relay

    def amounts(self) -> dict[str, int]:
        return {"storage": self.storage, "egress": self.egress, "relay": self.relay}

    def body(self) -> bytes:
        return (
            Writer()
            .push_bytes(_DOMAIN)
            .push_bytes(self.payer_key)
            .push_bytes(self.payee_id)
            .push_u64(self.seq)
            .push_u64(self.issued)
            .push_u64(self.storage)
            .push_u64(self.egress)
            .push_u64(self.relay)
            .data()
        )

    def signed(self, payer: identity.Identity) -> Voucher:
        if payer.public_key != self.payer_key:
            raise ProofError("voucher: signing identity is not the voucher's payer")
        return replace(self, signature=payer.sign(self.body()))

    def check(self) -> None:
        if not identity.verify(self.payer_key, self.body(), self.signature):
            raise ProofError("voucher: bad payer signature; refused")

    def encode(self) -> bytes:
        return self.body()[len(_DOMAIN) :] + self.signature.ljust(64, b"\0")

    @classmethod
    def decode(cls, data: bytes) -> Voucher:
        r = Reader(data, "voucher")
        v = cls(
            payer_key=r.pull_bytes(32),
            payee_id=r.pull_bytes(32),
            seq=r.pull_u64(),
            issued=r.pull_u64(),
            storage=r.pull_u64(),
            egress=r.pull_u64(),
            relay=r.pull_u64(),
            signature=r.pull_bytes(64),
        )
        r.end()
        return v
