"""STUN Binding server without I/O (RFC 8489, with RFC 5780's CHANGE-REQUEST).

:meth:`StunServer.handle` takes a request, the address it came from and the local address it
arrived on, and returns the :class:`Reply` to send, or None for anything that gets no answer
(indications, responses, garbage). A reply names the local address it must leave from: a
CHANGE-REQUEST asks for the alternate IP and/or port, which only a server that owns four
sockets (two IPs by two ports) can honour; others answer 420 so the client knows. Answers are
rate-limited by a token bucket so the server cannot be used to reflect a flood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.transport.nat import stun
from node.transport.nat.errors import StunError
from node.transport.nat.stun import Address, Attr, Class, Method

KNOWN_ATTRIBUTES = frozenset(
    {
        Attr.CHANGE_REQUEST,
        Attr.USERNAME,
        Attr.MESSAGE_INTEGRITY,
        Attr.MESSAGE_INTEGRITY_SHA256,
        Attr.PADDING,
        Attr.RESPONSE_PORT,
    }
)

Credentials = Callable[[str], bytes | None]


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    """The encoded response."""
    dest: Address
    """Where to send it (the request's source)."""
    source: Address
    """Local address to send it from (differs from the arrival address after CHANGE-REQUEST)."""


class StunServer:
    """Answers Binding requests.

    ``rfc5780`` is ((primary IP, primary port), (alternate IP, alternate port)) when the host
    serves RFC 5780 from the four sockets those make; ``credentials`` maps a USERNAME to
    its short-term key for authenticated checks.
    """

    def __init__(
        self,
        *,
        rfc5780: tuple[Address, Address] | None = None,
        credentials: Credentials | None = None,
        rate: float = 500.0,
        burst: float = 200.0,
        serve_plain: bool = True,
    ) -> None:
        self.rfc5780 = rfc5780
        self.serve_plain = serve_plain
        self.credentials = credentials
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last: float | None = None
        self.counters = {"requests": 0, "answered": 0, "rejected": 0, "limited": 0}

    def _allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _swap(self, local: Address, change: int) -> Address:
        assert self.rfc5780 is not None
        (ip_a, port_a), (ip_b, port_b) = self.rfc5780
        host, port = local
        if change & stun.CHANGE_IP:
            host = ip_b if host == ip_a else ip_a
        if change & stun.CHANGE_PORT:
            port = port_b if port == port_a else port_a
        return host, port

    def other_address(self, local: Address) -> Address | None:
        if self.rfc5780 is None:
            return None
        return self._swap(local, stun.CHANGE_IP | stun.CHANGE_PORT)

    def handle(self, data: bytes, src: Address, local: Address, now: float) -> Reply | None:
        try:
            req = stun.decode(data)
        except StunError:
            self.counters["rejected"] += 1
            return None
        if req.cls != Class.REQUEST:
            return None
        self.counters["requests"] += 1
        if not self._allow(now):
            self.counters["limited"] += 1
            return None
        if req.method != Method.BINDING:
            return self._error(req, src, local, 400, "only Binding is served")
        unknown = req.unknown_required(KNOWN_ATTRIBUTES)
        if unknown:
            reply = stun.Message(req.method, Class.ERROR, req.transaction_id)
            reply.add(Attr.ERROR_CODE, stun.encode_error_code(420, "Unknown Attribute"))
            reply.add(Attr.UNKNOWN_ATTRIBUTES, b"".join(u.to_bytes(2, "big") for u in unknown))
            return self._reply(reply, src, local, None)
        key: bytes | None = None
        username = req.get(Attr.USERNAME)
        if username is None and not self.serve_plain:
            return None  # only authenticated hole-punch checks are answered here
        if username is not None or req.get(Attr.MESSAGE_INTEGRITY) is not None:
            if self.credentials is None or username is None:
                return self._error(req, src, local, 400, "USERNAME and MESSAGE-INTEGRITY needed")
            key = self.credentials(username.decode("utf-8", "replace"))
            if key is None or not stun.check_integrity(data, key):
                return self._error(req, src, local, 401, "Unauthenticated")
        try:
            change = req.change_request
        except StunError:
            return self._error(req, src, local, 400, "bad CHANGE-REQUEST")
        dest = src
        response_port = req.get(Attr.RESPONSE_PORT)
        if response_port is not None:
            # RFC 5780 section 7.5: answer to the same IP on another port
            if len(response_port) != 4:
                return self._error(req, src, local, 400, "bad RESPONSE-PORT")
            dest = (src[0], int.from_bytes(response_port[:2], "big"))
        source = local
        if change:
            if self.rfc5780 is None:
                reply = stun.Message(req.method, Class.ERROR, req.transaction_id)
                reply.add(Attr.ERROR_CODE, stun.encode_error_code(420, "Unknown Attribute"))
                reply.add(Attr.UNKNOWN_ATTRIBUTES, int(Attr.CHANGE_REQUEST).to_bytes(2, "big"))
                return self._reply(reply, src, local, None)
            source = self._swap(local, change)
        reply = stun.Message(req.method, Class.SUCCESS, req.transaction_id)
        reply.add(Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(src, req.transaction_id))
        reply.add(Attr.MAPPED_ADDRESS, stun.encode_address(src))
        reply.add(Attr.RESPONSE_ORIGIN, stun.encode_address(source))
        other = self.other_address(local)
        if other is not None:
            reply.add(Attr.OTHER_ADDRESS, stun.encode_address(other))
        reply.add(Attr.SOFTWARE, stun.SOFTWARE.encode())
        self.counters["answered"] += 1
        return self._reply(reply, dest, source, key)

    def _error(self, req: stun.Message, src: Address, local: Address, code: int, why: str) -> Reply:
        reply = stun.Message(req.method, Class.ERROR, req.transaction_id)
        reply.add(Attr.ERROR_CODE, stun.encode_error_code(code, why))
        return self._reply(reply, src, local, None)

    def _reply(self, msg: stun.Message, dest: Address, source: Address, key: bytes | None) -> Reply:
        return Reply(stun.encode(msg, integrity_key=key, fingerprint=True), dest, source)
