"""STUN client transactions without I/O (RFC 8489 section 6.2.1 retransmission over UDP).

Theory of operation: :meth:`StunClient.request` queues a Binding request and returns its
transaction id. The request is sent at once, then again after RTO, 2·RTO, 4·RTO… until ``rc``
requests have gone out; after the last one the client waits ``rm``·RTO more and then gives up.
With the defaults (RTO 500 ms, Rc 7, Rm 16) requests leave at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and
31.5 s and the transaction fails at 39.5 s. Answers are matched by transaction id and source;
the outcome is a :class:`BindingSucceeded` or :class:`BindingFailed` event.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from node.transport.nat import stun
from node.transport.nat.errors import StunError
from node.transport.nat.stun import Address, Attr, Class

RTO_INITIAL = 0.5  # RFC 8489 section 6.2.1: SHOULD be >= 500 ms
RC = 7
RM = 16


class Event:
    """Base class of client events."""


@dataclass(frozen=True, slots=True)
class BindingSucceeded(Event):
    transaction_id: bytes
    """Id of the request this answers."""
    mapped: Address
    """Our address as the server saw it (XOR-MAPPED-ADDRESS)."""
    source: Address
    """Where the answer came from (tells whether CHANGE-REQUEST was honoured)."""
    other_address: Address | None
    """The server's alternate address (OTHER-ADDRESS), for behaviour discovery."""
    response_origin: Address | None
    """The address the server says it answered from (RESPONSE-ORIGIN)."""
    rtt: float
    """Seconds from the first send to the answer."""
    message: stun.Message
    """The whole response, for callers that want more attributes."""


@dataclass(frozen=True, slots=True)
class BindingFailed(Event):
    transaction_id: bytes
    """Id of the failed request."""
    reason: str
    """One-line reason: timeout or the server's error."""
    error_code: int | None = None
    """STUN error code when the server answered with an error."""


@dataclass
class _Transaction:
    transaction_id: bytes
    dest: Address
    data: bytes
    started: float
    next_at: float
    rto: float
    sent: int = 0
    integrity_key: bytes | None = None
    attempts: int = RC
    final_wait: float = RTO_INITIAL * RM


class StunClient:
    """Runs Binding transactions; drive it with ``receive``, ``handle_timer`` and ``now``."""

    def __init__(self, *, rto: float = RTO_INITIAL, rc: int = RC, rm: int = RM) -> None:
        self.rto = rto
        self.rc = rc
        self.rm = rm
        self._pending: dict[bytes, _Transaction] = {}
        self._out: deque[tuple[bytes, Address]] = deque()
        self._events: deque[Event] = deque()

    def request(
        self,
        dest: Address,
        now: float,
        *,
        change: int = 0,
        username: str | None = None,
        integrity_key: bytes | None = None,
        extra: list[tuple[int, bytes]] | None = None,
        rto: float | None = None,
        attempts: int | None = None,
        final_wait: float | None = None,
    ) -> bytes:
        """Start a Binding request to ``dest``; returns its transaction id.

        ``rto``, ``attempts`` and ``final_wait`` override RTO, Rc and Rm·RTO for this
        transaction (NAT behaviour tests expect some requests to go unanswered and should not
        wait 39.5 s for each).
        """
        tid = secrets.token_bytes(stun.TRANSACTION_ID_LEN)
        msg = stun.binding_request(tid, change=change)
        if username is not None:
            msg.add(Attr.USERNAME, username.encode())
        for kind, value in extra or []:
            msg.add(kind, value)
        msg.add(Attr.SOFTWARE, stun.SOFTWARE.encode())
        data = stun.encode(msg, integrity_key=integrity_key, fingerprint=True)
        txn = _Transaction(
            tid,
            dest,
            data,
            now,
            now,
            rto or self.rto,
            integrity_key=integrity_key,
            attempts=attempts or self.rc,
        )
        txn.final_wait = final_wait if final_wait is not None else txn.rto * self.rm
        self._pending[tid] = txn
        self._send_due(txn, now)
        return tid

    def cancel(self, transaction_id: bytes) -> None:
        self._pending.pop(transaction_id, None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _send_due(self, txn: _Transaction, now: float) -> None:
        self._out.append((txn.data, txn.dest))
        txn.sent += 1
        # after the last request wait Rm times the initial RTO (RFC 8489 section 6.2.1)
        txn.next_at = now + (txn.rto if txn.sent < txn.attempts else txn.final_wait)
        txn.rto *= 2

    def receive(self, data: bytes, addr: Address, now: float) -> bool:
        """Feed one datagram; True when it answered one of our transactions."""
        if len(data) < stun.HEADER_LEN:
            return False
        txn = self._pending.get(bytes(data[8:20]))
        if txn is None:
            return False
        try:
            msg = stun.decode(data)
        except StunError:
            return False
        if msg.cls not in (Class.SUCCESS, Class.ERROR):
            return False
        if txn.integrity_key is not None and not stun.check_integrity(data, txn.integrity_key):
            return False  # forged or foreign answer: keep waiting for the real one
        del self._pending[txn.transaction_id]
        if msg.cls == Class.ERROR:
            code, reason = msg.error or (0, "error response without ERROR-CODE")
            self._events.append(
                BindingFailed(txn.transaction_id, f"server answered {code} {reason}", code)
            )
            return True
        mapped = msg.mapped_address
        if mapped is None:
            self._events.append(
                BindingFailed(txn.transaction_id, "success response without a mapped address")
            )
            return True
        self._events.append(
            BindingSucceeded(
                txn.transaction_id,
                mapped,
                addr,
                msg.other_address,
                msg.address(Attr.RESPONSE_ORIGIN),
                now - txn.started,
                msg,
            )
        )
        return True

    def handle_timer(self, now: float) -> None:
        for txn in list(self._pending.values()):
            if txn.next_at > now:
                continue
            if txn.sent >= txn.attempts:
                del self._pending[txn.transaction_id]
                self._events.append(
                    BindingFailed(
                        txn.transaction_id,
                        f"no answer from {txn.dest[0]}:{txn.dest[1]} after {txn.sent} requests",
                    )
                )
            else:
                self._send_due(txn, now)

    def get_timer(self) -> float | None:
        return min((t.next_at for t in self._pending.values()), default=None)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None
