"""STUN client and server cores on a fake clock, paired in memory."""

from __future__ import annotations

import pytest

from node.transport.nat import stun
from node.transport.nat.stun import Attr
from node.transport.nat.stun_client import BindingFailed, BindingSucceeded, StunClient
from node.transport.nat.stun_server import StunServer

CLIENT = ("192.0.2.10", 40000)
SERVER = ("198.51.100.1", 3478)


def test_rfc8489_retransmission_schedule() -> None:
    client = StunClient()
    client.request(SERVER, now=0.0)
    sends = [0.0] if client.datagrams_to_send() else []
    now = 0.0
    while (timer := client.get_timer()) is not None:
        now = timer
        client.handle_timer(now)
        if client.datagrams_to_send():
            sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == pytest.approx(39.5)
    event = client.next_event()
    assert isinstance(event, BindingFailed)
    assert event.error_code is None
    assert "after 7 requests" in event.reason


def test_binding_through_server_after_losses() -> None:
    client = StunClient(rto=0.125)
    server = StunServer()
    tid = client.request(SERVER, now=0.0)
    client.datagrams_to_send()  # the first two requests are lost
    client.handle_timer(0.125)
    client.datagrams_to_send()
    client.handle_timer(0.375)
    [(data, dest)] = client.datagrams_to_send()
    assert dest == SERVER
    reply = server.handle(data, CLIENT, SERVER, now=0.375)
    assert reply is not None and reply.dest == CLIENT and reply.source == SERVER
    assert client.receive(reply.data, SERVER, now=0.5)
    event = client.next_event()
    assert isinstance(event, BindingSucceeded)
    assert event.transaction_id == tid
    assert event.mapped == CLIENT
    assert event.rtt == pytest.approx(0.5)
    assert event.response_origin == SERVER
    assert client.get_timer() is None
    # a duplicate answer is ignored
    assert not client.receive(reply.data, SERVER, now=0.6)


def test_error_response_and_unknown_attributes() -> None:
    client = StunClient()
    server = StunServer()
    client.request(SERVER, now=0.0, extra=[(0x7777, b"x")])
    [(data, _)] = client.datagrams_to_send()
    reply = server.handle(data, CLIENT, SERVER, now=0.0)
    assert reply is not None
    msg = stun.decode(reply.data)
    assert msg.error == (420, "Unknown Attribute")
    assert msg.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x77\x77"
    assert client.receive(reply.data, SERVER, now=0.01)
    event = client.next_event()
    assert isinstance(event, BindingFailed) and event.error_code == 420


def test_change_request_served_from_the_other_socket() -> None:
    primary, alternate = ("198.51.100.1", 3478), ("198.51.100.2", 3479)
    server = StunServer(rfc5780=(primary, alternate))
    client = StunClient()
    client.request(primary, now=0.0, change=stun.CHANGE_IP | stun.CHANGE_PORT)
    [(data, _)] = client.datagrams_to_send()
    reply = server.handle(data, CLIENT, primary, now=0.0)
    assert reply is not None and reply.source == alternate
    assert stun.decode(reply.data).other_address == alternate
    client.request(primary, now=0.0, change=stun.CHANGE_PORT)
    [(data, _)] = client.datagrams_to_send()
    reply = server.handle(data, CLIENT, primary, now=0.0)
    assert reply is not None and reply.source == ("198.51.100.1", 3479)


def test_authenticated_check_needs_the_right_key() -> None:
    key = b"shared-secret-of-this-punch"
    server = StunServer(credentials=lambda user: key if user == "a:b" else None)
    client = StunClient()
    client.request(SERVER, now=0.0, username="a:b", integrity_key=key)
    [(data, _)] = client.datagrams_to_send()
    reply = server.handle(data, CLIENT, SERVER, now=0.0)
    assert reply is not None and stun.check_integrity(reply.data, key)
    assert client.receive(reply.data, SERVER, now=0.0)
    assert isinstance(client.next_event(), BindingSucceeded)

    client.request(SERVER, now=0.0, username="a:b", integrity_key=b"guess")
    [(data, _)] = client.datagrams_to_send()
    reply = server.handle(data, CLIENT, SERVER, now=0.0)
    assert reply is not None and stun.decode(reply.data).error == (401, "Unauthenticated")


def test_forged_answer_without_integrity_is_ignored() -> None:
    key = b"k" * 16
    client = StunClient()
    tid = client.request(SERVER, now=0.0, username="a:b", integrity_key=key)
    forged = stun.Message(stun.Method.BINDING, stun.Class.SUCCESS, tid)
    forged.add(Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(("6.6.6.6", 6), tid))
    assert not client.receive(stun.encode(forged), SERVER, now=0.1)
    assert client.pending == 1


def test_server_rate_limit_bounds_reflection() -> None:
    server = StunServer(rate=10, burst=5)
    req = stun.encode(stun.binding_request(bytes(12)))
    answered = sum(server.handle(req, CLIENT, SERVER, now=0.0) is not None for _ in range(50))
    assert answered == 5
    assert server.handle(req, CLIENT, SERVER, now=1.0) is not None
    assert server.counters["limited"] == 45
